#!/usr/bin/env python3
"""Load on an OpenAI-compatible endpoint on loopback: many short chat completions from
concurrent clients.

Usage: load_bench.py API_PORT REQUESTS CLIENTS MAX_TOKENS [KEYS_FILE]
First times SOLO requests one at a time (the generation time of one request on an idle
server), then sends REQUESTS requests from CLIENTS threads, each request a different prompt
(greedy, not streamed). Prints one line:
"SOLO_P50 REQUESTS_PER_SECOND P50 P99 FAILED" (seconds), latency measured per request from
send to full answer. A failed request (not 200) counts in FAILED and not in the latencies.
With KEYS_FILE (one API key per line), request i sends key i mod the number of keys as
`Authorization: Bearer` (the keys' users pay).
"""
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request

from api_wait import served_model

api, n, clients, max_tokens = (int(a) for a in sys.argv[1:5])
keys = []
if len(sys.argv) > 5:
    with open(sys.argv[5]) as f:
        keys = [line.strip() for line in f if line.strip()]
SOLO = 5
url = f"http://127.0.0.1:{api}/v1/chat/completions"
model = served_model(api)


def ask(i):
    body = json.dumps({"model": model, "temperature": 0, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": f"Say a word about number {i}."}]})
    headers = {"Content-Type": "application/json"}
    if keys:
        headers["Authorization"] = f"Bearer {keys[i % len(keys)]}"
    req = urllib.request.Request(url, body.encode(), headers)
    start = time.time()
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            return time.time() - start if r.status == 200 else None
    except urllib.error.HTTPError:
        return None


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


solo = [t for t in (ask(100_000 + i) for i in range(SOLO)) if t is not None]
latencies, failed, lock = [], [0], threading.Lock()
todo = iter(range(n))


def client():
    while True:
        with lock:
            i = next(todo, None)
        if i is None:
            return
        t = ask(i)
        with lock:
            if t is None:
                failed[0] += 1
            else:
                latencies.append(t)


start = time.time()
threads = [threading.Thread(target=client) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.time() - start
print(f"{statistics.median(solo):.3f} {len(latencies) / wall:.2f} {pct(latencies, 50):.3f} "
      f"{pct(latencies, 99):.3f} {failed[0]}")
