#!/usr/bin/env bash
# The long soak (root): tests/soak.rs for MINUTES minutes (default 30) on hosts made of network
# namespaces: four validators and a worker behind NAT, 50 ms round trips and 1% loss, steady
# transfers and chat completions. Prints the load served and each node's resident memory slope
# after warm-up (the first third); fails on any error response, a lost transfer, a fork, or
# memory rising by more than the test allows. CI runs the same test for 90 s.
#
#   sudo scripts/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export BITORCH_TEST_MODEL="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
export BITORCH_SOAK_SECS=$((MINUTES * 60))
exec cargo test --workspace --test soak -- --nocapture
