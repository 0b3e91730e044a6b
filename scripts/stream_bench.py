#!/usr/bin/env python3
"""Times streamed chat completions against an OpenAI-compatible endpoint on loopback.

Usage: stream_bench.py API_PORT MAX_TOKENS PROMPT REPEATS
Prints "TTFT_SECONDS TOKENS_PER_SECOND GENERATED_TOKENS": the time to the first token of the
first request (a server that keeps the previous prompt's KV cache answers a repeated prompt at
once, so later TTFTs are not comparable), and the generated tokens/s after the first token and
the token count of the best of REPEATS requests. Tokens are the usage the server reports, or the
content chunks it streamed where it reports none (one token a chunk). Answers other than 200 (no route yet, busy) are
retried for up to 30 extra attempts.
"""
import json
import sys
import time
import urllib.error
import urllib.request

from api_wait import served_model

api, max_tokens, prompt, repeats = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = served_model(api)
body = json.dumps({"model": model, "temperature": 0, "max_tokens": max_tokens, "stream": True,
                   "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": prompt}]}).encode()
best = None
first_ttft = None
for attempt in range(repeats + 30):
    req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    start = time.time(); first = None; usage = None; pieces = 0
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    pieces += 1
                    if first is None:
                        first = time.time()
    except urllib.error.HTTPError:  # routes not found yet, or busy: retry
        time.sleep(1)
        continue
    end = time.time()
    # Servers that do not report usage in a stream (llama-cpp-python's) send a token a chunk.
    gen = usage["completion_tokens"] if usage else pieces
    tps = (gen - 1) / (end - first)
    cur = (first - start, tps, gen)
    if first_ttft is None:
        first_ttft = first - start
    if best is None or tps > best[1]:
        best = cur
    repeats -= 1
    if repeats == 0:
        break
if best is None:
    sys.exit("no request succeeded")
print(f"{first_ttft:.3f} {best[1]:.2f} {best[2]}")
