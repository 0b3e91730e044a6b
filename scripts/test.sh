#!/usr/bin/env bash
# Runs the whole test suite: unit, property, RPC and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
exec cargo test --workspace "$@"
