#!/usr/bin/env bash
# Request throughput of the README's main job (a one-node dev chain serving the real model, dev
# build, as scripts/dev-node.sh runs it): REQUESTS short chat completions (MAX_TOKENS tokens,
# greedy) from CLIENTS concurrent clients on its OpenAI-compatible API. Prints requests/s, p50
# and p99 latency, one idle request's latency, their ratio, and the jobs opened on chain during
# the load (a transaction each). With a git revision REF as the first argument, the binary
# built from REF runs the same load in the same run, as the reference (built in a worktree
# with the same target directory, then copied aside).
# With KEYS=K in the environment, this tree also runs the load paid by K users with API tokens
# (`Authorization: Bearer btr_…`, request i from user i mod K): the users are funded in the
# chain spec and each approves the node's API account, so their requests open jobs from
# their own allowances. The reference should then be a revision from before API tokens
# (e.g. 7f46781^), whose requests the operator pays.
# Usage: [KEYS=100] scripts/bench-throughput.sh [REF] [REQUESTS] [CLIENTS] [MAX_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/dev-node.sh
source scripts/lib/dev-node.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
REF="${1:-}"; N="${2:-200}"; CLIENTS="${3:-8}"; MAX="${4:-8}"; KEYS="${KEYS:-0}"
MODEL="$(scripts/fetch-model.sh)"
RPC=19970; API=18200
PID=""; WORK=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null
  wait 2>/dev/null || true
  [ -n "$WORK" ] && git worktree remove --force "$WORK" 2>/dev/null
  true
}
trap cleanup EXIT

BINS=()
if [ -n "$REF" ]; then
  WORK="$(mktemp -d -t bitorch-ref.XXXXXX)"
  git worktree add --detach "$WORK" "$REF" >/dev/null
  (cd "$WORK" && cargo build -q -p bitorch --bin bitorch)
  cp "$CARGO_TARGET_DIR/debug/bitorch" "$WORK/bitorch-ref"
  BINS+=("$WORK/bitorch-ref")
  # The two trees' crates share artifact names in the target directory and cargo judges
  # freshness by time: make this tree's sources newer so that it rebuilds them.
  git ls-files '*.rs' '*.toml' | xargs touch
fi
cargo build -q -p bitorch --bin bitorch
BINS+=("$CARGO_TARGET_DIR/debug/bitorch")

rpc() {
  python3 -c "
import json, sys, urllib.request
body = json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': sys.argv[1], 'params': json.loads(sys.argv[2])})
req = urllib.request.Request('http://127.0.0.1:$RPC', body.encode(), {'Content-Type': 'application/json'})
print(json.dumps(json.load(urllib.request.urlopen(req))['result']))" "$@"
}
# Jobs opened so far: the first id with no job.
jobs() {
  local i=0
  while [ "$(rpc bitorch_job "[$i]")" != "null" ]; do i=$((i + 1)); done
  echo "$i"
}

# KEYS users (//User0…), funded in a dev spec of their own.
SPEC=""; KEYFILE=""
if [ "$KEYS" -gt 0 ]; then
  SPEC="$(mktemp -t bitorch-keys-spec.XXXXXX.json)"; KEYFILE="$(mktemp -t bitorch-keys.XXXXXX)"
  NEW="${BINS[-1]}"
  "$NEW" chain-spec --chain dev >"$SPEC"
  for i in $(seq 0 $((KEYS - 1))); do "$NEW" key inspect "//User$i" --output-type json; done |
    python3 -c "
import json, sys
dec = json.JSONDecoder(); text = sys.stdin.read(); users = []; i = 0
while i < len(text):
    if text[i].isspace(): i += 1; continue
    v, i = dec.raw_decode(text, i); users.append(v['ss58Address'])
spec = json.load(open(sys.argv[1]))
spec['genesis']['balances'] += [[u, '1000000000000000'] for u in users]
json.dump(spec, open(sys.argv[1], 'w'))" "$SPEC"
fi
ALICE=5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY
# Each user approves the node's API account (//Alice) and makes a token for it.
make_keys() {
  local bin="$1" genesis
  genesis="$(rpc chain_getBlockHash '[0]' | tr -d '"')"
  : >"$KEYFILE"
  # In batches of 25 at once (each user signs its own, so their nonces do not collide).
  local pids=()
  for i in $(seq 0 $((KEYS - 1))); do
    "$bin" wallet approve --suri "//User$i" --gateway "$ALICE" --allowance 100 --expires 1d \
      --rpc "ws://127.0.0.1:$RPC" >/dev/null &
    pids+=($!)
    if [ "${#pids[@]}" -eq 25 ]; then wait "${pids[@]}"; pids=(); fi
  done
  [ "${#pids[@]}" -gt 0 ] && wait "${pids[@]}"
  for i in $(seq 0 $((KEYS - 1))); do
    "$bin" key api-token --suri "//User$i" --gateway "$ALICE" --expires 1d --genesis "$genesis" >>"$KEYFILE"
  done
}

RUNS=()
for BIN in "${BINS[@]}"; do RUNS+=("$BIN|operator"); done
[ "$KEYS" -gt 0 ] && RUNS+=("${BINS[-1]}|keys")
printf '\n%-34s %8s %8s %8s %8s %8s %6s %6s\n' "$N requests x $MAX tokens, $CLIENTS clients" \
  "req/s" "p50 s" "p99 s" "idle s" "p50/idle" "jobs" "failed"
for RUN in "${RUNS[@]}"; do
  BIN="${RUN%%|*}"; MODE="${RUN##*|}"
  ARGS=(); [ -n "$SPEC" ] && [ "$BIN" = "${BINS[-1]}" ] && ARGS=(--chain "$SPEC")
  start_dev_node "$BIN" "$(mktemp -t bitorch-throughput.XXXXXX.log)" "$RPC" "$API" "$MODEL" "${ARGS[@]}"
  LOADKEYS=()
  if [ "$MODE" = keys ]; then make_keys "$BIN"; LOADKEYS=("$KEYFILE"); fi
  before="$(jobs)"
  read -r solo rps p50 p99 failed <<<"$(python3 scripts/load_bench.py "$API" "$N" "$CLIENTS" "$MAX" "${LOADKEYS[@]}")"
  opened=$(( $(jobs) - before ))
  kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=""
  name="this tree"; [ "$BIN" != "${BINS[-1]}" ] && name="reference $REF"
  [ "$MODE" = keys ] && name="this tree, $KEYS users' API keys"
  ratio="$(python3 -c "print(f'{$p50 / $solo:.2f}')")"
  printf '%-34s %8s %8s %8s %8s %8s %6s %6s\n' "$name" "$rps" "$p50" "$p99" "$solo" "$ratio" \
    "$opened" "$failed"
done
echo "idle: median latency of 5 requests one at a time before the load; jobs: opened on chain during the idle and loaded requests"
