#!/usr/bin/env bash
# Benchmark of the README's main job as a user runs it: a one-node dev chain serving the real
# model (`scripts/dev-node.sh`'s command, dev build) answering a streamed chat completion on its
# OpenAI-compatible API, next to `bitorch infer` in one process (the same engine and kernel,
# no network, no chain) and llama.cpp's own OpenAI server (llama-cpp-python, 2 threads, the
# same GGUF file and request) in the same run. Prints time to first token, generated tokens/s
# (best of REPEATS), the ratios, and each server's resident memory after the requests.
# BITORCH_NO_LLAMA=1 leaves llama.cpp out (its first use builds it: about 5 minutes).
# Usage: scripts/bench-main-job.sh [MAX_TOKENS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/dev-node.sh
source scripts/lib/dev-node.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
MAX="${1:-128}"; REPEATS="${2:-3}"
BIN="$CARGO_TARGET_DIR/debug/bitorch"
cargo build -q -p bitorch --bin bitorch
MODEL="$(scripts/fetch-model.sh)"
PROMPT="Write a short story about a robot who learns to paint."
RPC=19960; API=18190; LLAMA_PORT=18191
PID=""; LPID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  [ -n "$LPID" ] && kill "$LPID" 2>/dev/null
  wait 2>/dev/null || true
}
trap cleanup EXIT

# One process: prompt and generation speed as `bitorch infer --stats` reports them.
best_local="$(scripts/infer_bench.sh "$BIN" "$MODEL" "$MAX" "$PROMPT" "$REPEATS")"

# The main job: the dev node serving the model, asked over its API.
start_dev_node "$BIN" "$(mktemp -t bitorch-main-job.XXXXXX.log)" "$RPC" "$API" "$MODEL"
best_node="$(python3 scripts/stream_bench.py "$API" "$MAX" "$PROMPT" "$REPEATS")"
RSS_MB=$(( $(awk '/VmRSS/ {print $2}' "/proc/$PID/status") / 1024 ))
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""

# llama.cpp's OpenAI server on the same file, 2 threads, the same request.
best_llama=""; LRSS_MB=""
if [ -z "${BITORCH_NO_LLAMA:-}" ]; then
  LPY="$(scripts/llama-venv.sh)"
  LLOG="$(mktemp -t bitorch-llama.XXXXXX.log)"
  "$LPY" -m llama_cpp.server --model "$MODEL" --n_threads 2 --n_ctx 2048 \
    --host 127.0.0.1 --port "$LLAMA_PORT" >"$LLOG" 2>&1 &
  LPID=$!
  for _ in $(seq 1 300); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$LLAMA_PORT/v1/models', timeout=1)" \
      2>/dev/null && break
    kill -0 "$LPID" 2>/dev/null || { echo "llama.cpp's server stopped; see $LLOG" >&2; exit 1; }
    sleep 0.2
  done
  best_llama="$(python3 scripts/stream_bench.py "$LLAMA_PORT" "$MAX" "$PROMPT" "$REPEATS")"
  LRSS_MB=$(( $(awk '/VmRSS/ {print $2}' "/proc/$LPID/status") / 1024 ))
fi

read -r lt ltps lgen <<<"$best_local"
read -r nt ntps ngen <<<"$best_node"
printf '\n%-40s %10s %12s %10s\n' "main job (SmolLM2-135M, dev build)" "TTFT s*" "gen tok/s" "tokens"
printf '%-40s %10s %12s %10s\n' "bitorch infer, 1 process" "$lt" "$ltps" "$lgen"
printf '%-40s %10s %12s %10s\n' "dev node, OpenAI API, streamed" "$nt" "$ntps" "$ngen"
if [ -n "$best_llama" ]; then
  read -r pt ptps pgen <<<"$best_llama"
  printf '%-40s %10s %12s %10s\n' "llama.cpp server (llama-cpp-python)" "$pt" "$ptps" "$pgen"
fi
python3 -c "print(f'ratio node/one process: {float(\"$ntps\")/float(\"$ltps\"):.2f}')"
[ -n "$best_llama" ] && python3 -c "print(f'ratio node/llama.cpp: tokens/s {float(\"$ntps\")/float(\"$ptps\"):.2f}, TTFT {float(\"$nt\")/float(\"$pt\"):.2f}')"
echo "* TTFT of the first request (bitorch infer: prefill of one run); tokens/s: best of $REPEATS"
echo "resident memory after the requests: dev node ${RSS_MB} MB${LRSS_MB:+, llama.cpp server ${LRSS_MB} MB}"
