#!/usr/bin/env bash
# Benchmark of a 4-validator testnet on loopback (1 s block time): finalized transfers per
# second and submission-to-finality latency (p50, p99), measured by a load generator
# (node/cli/examples/load.rs) that funds ACCOUNTS accounts and sends TXS_PER_ACCOUNT transfers
# from each. Each row runs on a fresh testnet:
#   - open loop at RATE transfers/s (evenly spaced; latency under a steady load),
#   - as fast as the node takes them (capacity).
# Usage: scripts/bench-testnet.sh [ACCOUNTS] [TXS_PER_ACCOUNT] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
DIR="${TMPDIR:-/tmp}/bitorch-bench-testnet"
ACCOUNTS="${1:-500}"; PER="${2:-20}"; RATE="${3:-1000}"
cargo build -q -p bitorch --bin bitorch --example load
trap 'scripts/testnet.sh stop --dir "$DIR" >/dev/null' EXIT
for rate in "$RATE" 0; do
  scripts/testnet.sh start 4 --dir "$DIR" >/dev/null
  "$CARGO_TARGET_DIR/debug/examples/load" "ws://127.0.0.1:${BITORCH_RPC_BASE:-9944}" \
    "$ACCOUNTS" "$PER" "$rate" 2>/dev/null | { [ "$rate" = "$RATE" ] && cat || tail -n 1; }
  scripts/testnet.sh stop --dir "$DIR" >/dev/null
done
