#!/usr/bin/env bash
# Local testnet on loopback.
#   scripts/testnet.sh start N [--dir DIR] [--model PATH]
#                                            writes a chain spec with N validators (//Alice,
#                                            //Bob, …), starts N nodes, waits for finality,
#                                            prints each node's RPC URL and log file; with
#                                            --model, node i serves the i-th of N equal layer
#                                            ranges of the model and an OpenAI-compatible API
#                                            on 127.0.0.1:$((8080+i)) (paid by its validator);
#                                            node 0 imports the file, the others pull their
#                                            layers' chunks from the network by model id
#   scripts/testnet.sh stop [--dir DIR]      stops exactly the nodes it started
# Node i listens for RPC on 127.0.0.1:$((9944+i)), for peers on 127.0.0.1:$((30333+i)) and
# serves Prometheus metrics on 127.0.0.1:$((9615+i)); override the bases with
# BITORCH_RPC_BASE, BITORCH_P2P_BASE and BITORCH_PROMETHEUS_BASE.
set -euo pipefail
cd "$(dirname "$0")/.."
CMD="${1:-}"; shift || true
N=""
MODEL=""
DIR="${TMPDIR:-/tmp}/bitorch-testnet"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    *) N="$1"; shift ;;
  esac
done
RPC_BASE="${BITORCH_RPC_BASE:-9944}"
API_BASE="${BITORCH_API_BASE:-8080}"
P2P_BASE="${BITORCH_P2P_BASE:-30333}"
PROM_BASE="${BITORCH_PROMETHEUS_BASE:-9615}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
BIN="${BITORCH_BIN:-$CARGO_TARGET_DIR/debug/bitorch}"
NAMES=(Alice Bob Charlie Dave Eve Ferdie)

stop() {
  for pidfile in "$DIR"/node*.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

rpc() { # port method
  curl -s -m 2 -H 'Content-Type: application/json' \
    -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$2\",\"params\":[]}" "http://127.0.0.1:$1" || true
}

case "$CMD" in
  start)
    [ -n "$N" ] && [ "$N" -ge 1 ] || { echo "usage: $0 start N [--dir DIR]" >&2; exit 2; }
    [ -x "$BIN" ] || { scripts/install-deps.sh; cargo build -p bitorch --bin bitorch; }
    stop
    rm -rf "$DIR"; mkdir -p "$DIR"
    "$BIN" chain-spec --chain local --validators "$N" -o "$DIR/spec.json"
    RANGES=()
    if [ -n "$MODEL" ]; then
      [ -f "$MODEL" ] || { echo "no model file at $MODEL (scripts/fetch-model.sh fetches one)" >&2; exit 2; }
      LAYERS="$(python3 - "$MODEL" <<'PY'
import struct, sys
# The layer count from the GGUF header (llama.block_count or <arch>.block_count).
f = open(sys.argv[1], "rb")
magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", f.read(24))
def s():
    n, = struct.unpack("<Q", f.read(8)); return f.read(n).decode()
sizes = {0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
def val(t):
    if t == 8: return s()
    if t == 9:
        at, n = struct.unpack("<IQ", f.read(12)); return [val(at) for _ in range(n)]
    raw = f.read(sizes[t]); return int.from_bytes(raw, "little") if t not in (6, 12) else None
for _ in range(n_kv):
    k = s(); t, = struct.unpack("<I", f.read(4)); v = val(t)
    if k.endswith(".block_count"):
        print(v); break
PY
)"
      for i in $(seq 0 $((N - 1))); do RANGES+=("$((LAYERS * i / N))..$((LAYERS * (i + 1) / N))"); done
      # Node 0 holds the file (imported into its store); the others know only the id.
      MODEL_ID="$("$BIN" model import "$MODEL" --base-path "$DIR/node0" | awk 'NR==1 {print $2}')"
      echo "model $MODEL_ID" >&2
    fi
    BOOT=""
    for i in $(seq 0 $((N - 1))); do
      base="$DIR/node$i"
      mkdir -p "$base/chains/local/network"
      peer="$("$BIN" key generate-node-key --file "$base/chains/local/network/secret_ed25519" 2>&1 >/dev/null)"
      suri="//${NAMES[$i]:-Node$i}"
      args=(node --chain "$DIR/spec.json" --base-path "$base" --validator "$suri"
            --rpc-port $((RPC_BASE + i)) --listen-addr "/ip4/127.0.0.1/tcp/$((P2P_BASE + i))"
            --prometheus-port $((PROM_BASE + i)))
      [ -n "$BOOT" ] && args+=(--boot-nodes "$BOOT")
      if [ -n "$MODEL" ]; then
        source="$MODEL_ID"; [ "$i" -eq 0 ] && source="$MODEL"
        args+=(--serve-model "$source" --layers "${RANGES[$i]}" --api-port $((API_BASE + i))
               --api-account "$suri")
      fi
      "$BIN" "${args[@]}" >"$DIR/node$i.log" 2>&1 &
      echo $! >"$DIR/node$i.pid"
      [ -z "$BOOT" ] && BOOT="/ip4/127.0.0.1/tcp/$P2P_BASE/p2p/$peer"
    done
    echo "waiting for finality…" >&2
    for _ in $(seq 1 120); do
      n="$(rpc "$RPC_BASE" chain_getHeader | python3 -c 'import json,sys
try: print(int(json.load(sys.stdin)["result"]["number"],16))
except Exception: print(0)')"
      [ "$n" -ge 2 ] && break
      sleep 0.5
    done
    [ "$n" -ge 2 ] || { echo "no finalized block after 60 s; see $DIR/node*.log" >&2; exit 1; }
    for i in $(seq 0 $((N - 1))); do
      line="node$i  ${NAMES[$i]:-Node$i}  rpc: http://127.0.0.1:$((RPC_BASE + i))  log: $DIR/node$i.log"
      [ -n "$MODEL" ] && line="$line  layers: ${RANGES[$i]}  api: http://127.0.0.1:$((API_BASE + i))/v1"
      echo "$line"
    done
    ;;
  stop) stop; echo "stopped" ;;
  *) echo "usage: $0 start N [--dir DIR] [--model PATH] | stop [--dir DIR]" >&2; exit 2 ;;
esac
