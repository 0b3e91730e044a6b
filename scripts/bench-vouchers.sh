#!/usr/bin/env bash
# What paying by vouchers costs a generation step of the real test model, against the same step
# unpaid in the same run (node/compute/benches/vouchers.rs); prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
BITORCH_TEST_MODEL="$(scripts/fetch-model.sh)"
export BITORCH_TEST_MODEL
cargo bench -q -p bitorch-compute --bench vouchers
