#!/usr/bin/env bash
# Block import benchmark: transfers/s into RocksDB with 1,000 vs 100,000 accounts.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The dev profile (dependencies at opt-level 2, our crates at 1) shares its build with the
# tests; a release build of RocksDB alone takes some 20 minutes on two cores.
exec cargo bench --profile dev -p bitorch-service --bench import "$@"
