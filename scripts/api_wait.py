"""Shared by the benchmark clients: waits for an OpenAI-compatible API on loopback."""
import json
import time
import urllib.error
import urllib.request


def served_model(api, within=60):
    """The id of the first model the API on port `api` serves, once it answers (a node opens its
    API a moment after announcing its worker); raises if it does not within `within` seconds."""
    deadline = time.time() + within
    while True:
        try:
            url = f"http://127.0.0.1:{api}/v1/models"
            return json.load(urllib.request.urlopen(url, timeout=30))["data"][0]["id"]
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.2)
