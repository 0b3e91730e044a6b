#!/usr/bin/env bash
# Builds and starts a one-node dev chain (Alice validates, blocks every second) with JSON-RPC
# on 127.0.0.1:9944. Data lives in $BITORCH_BASE (default ~/.local/share/bitorch-dev), so a
# restart resumes the chain; `bitorch purge-chain --base-path "$BITORCH_BASE" -y` starts over.
# Extra arguments go to `bitorch node`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
BASE="${BITORCH_BASE:-$HOME/.local/share/bitorch-dev}"
cargo build -p bitorch --bin bitorch
exec "$CARGO_TARGET_DIR/debug/bitorch" node --dev --base-path "$BASE" "$@"
