#!/usr/bin/env bash
# Benchmark: generation through the network pipeline versus one process, in one run.
#   - `bitorch infer` (one process, all 30 layers, same attention kernel as the workers), and
#   - 3 validator nodes on loopback serving layers 0..10, 10..20, 20..30, asked through node 0's
#     OpenAI-compatible API (gateway sampling, one hidden state per hop per token, paid jobs).
# Prints time to first token and generated tokens/s (best of REPEATS) for both and the ratio.
# Usage: scripts/bench-pipeline.sh [MAX_TOKENS] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
MAX="${1:-128}"; REPEATS="${2:-3}"
BIN="$CARGO_TARGET_DIR/debug/bitorch"
cargo build -q -p bitorch --bin bitorch
MODEL="$(scripts/fetch-model.sh)"
PROMPT="Write a short story about a robot who learns to paint."
DIR="${TMPDIR:-/tmp}/bitorch-bench-pipeline"
RPC_BASE=19944; P2P_BASE=31333; API=18090
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# One process.
best_local="$(scripts/infer_bench.sh "$BIN" "$MODEL" "$MAX" "$PROMPT" "$REPEATS")"

# Three workers on loopback.
rm -rf "$DIR"; mkdir -p "$DIR"
"$BIN" chain-spec --chain local --validators 3 -o "$DIR/spec.json"
NAMES=(Alice Bob Charlie); RANGES=(0..10 10..20 20..30); BOOT=""
for i in 0 1 2; do
  base="$DIR/node$i"; mkdir -p "$base/chains/local/network"
  peer="$("$BIN" key generate-node-key --file "$base/chains/local/network/secret_ed25519" 2>&1 >/dev/null)"
  args=(node --chain "$DIR/spec.json" --base-path "$base" --validator "//${NAMES[$i]}"
        --rpc-port $((RPC_BASE + i)) --listen-addr "/ip4/127.0.0.1/tcp/$((P2P_BASE + i))"
        --serve-model "$MODEL" --layers "${RANGES[$i]}" --api-port $((API + i))
        --api-account "//${NAMES[$i]}")
  [ -n "$BOOT" ] && args+=(--boot-nodes "$BOOT")
  "$BIN" "${args[@]}" >"$DIR/node$i.log" 2>&1 &
  PIDS+=($!)
  [ -z "$BOOT" ] && BOOT="/ip4/127.0.0.1/tcp/$P2P_BASE/p2p/$peer"
done
for _ in $(seq 1 240); do
  n=$( (grep -l "announced the worker in the DHT" "$DIR"/node*.log 2>/dev/null || true) | wc -l)
  [ "$n" -eq 3 ] && break; sleep 0.5
done
[ "$n" -eq 3 ] || { echo "workers not announced; see $DIR/node*.log" >&2; exit 1; }
best_net="$(python3 scripts/stream_bench.py "$API" "$MAX" "$PROMPT" "$REPEATS")"
read -r lt ltps lgen <<<"$best_local"
read -r nt ntps ngen <<<"$best_net"
HIDDEN=576; TOP=64
printf '\n%-34s %10s %12s %10s\n' "pipeline (SmolLM2-135M)" "TTFT s" "gen tok/s" "tokens"
printf '%-34s %10s %12s %10s\n' "bitorch infer, 1 process" "$lt" "$ltps" "$lgen"
printf '%-34s %10s %12s %10s\n' "3 workers over loopback libp2p" "$nt" "$ntps" "$ngen"
python3 -c "print(f'ratio network/one process: {float(\"$ntps\")/float(\"$ltps\"):.2f} (goal >= 0.85)')"
echo "payload per generated token: gateway->stage 1: 1 token id; stage->stage: $HIDDEN f32 = $((HIDDEN * 4)) bytes; last stage->gateway: $HIDDEN f32 and the top $TOP logits = $((HIDDEN * 4 + TOP * 8)) bytes (plus SCALE framing)"
