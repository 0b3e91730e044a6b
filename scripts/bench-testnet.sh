#!/usr/bin/env bash
# Benchmark of a 4-validator testnet on loopback (1 s block time): finalized transfers per
# second and submission-to-finality latency (p50, p99), measured by a load generator that
# funds ACCOUNTS accounts and sends TXS_PER_ACCOUNT transfers from each.
# Usage: scripts/bench-testnet.sh [ACCOUNTS] [TXS_PER_ACCOUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
DIR="${TMPDIR:-/tmp}/bitorch-bench-testnet"
cargo build -q -p bitorch --bin bitorch --example load
trap 'scripts/testnet.sh stop --dir "$DIR" >/dev/null' EXIT
scripts/testnet.sh start 4 --dir "$DIR" >/dev/null
"$CARGO_TARGET_DIR/debug/examples/load" "ws://127.0.0.1:${BITORCH_RPC_BASE:-9944}" "${1:-300}" "${2:-20}"
