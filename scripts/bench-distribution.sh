#!/usr/bin/env bash
# Benchmark: model distribution in one run (scripts/bench_distribution.py says what it measures):
# a pull from one seeder vs a plain TCP copy over loopback, two rate-limited seeders vs one,
# `bitorch model import` time and peak memory vs file size, and verification cost per GB.
# Usage: scripts/bench-distribution.sh [RATE_MB_PER_S]   (the seeders' limit, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
RATE="${1:-20}"
cargo build -q -p bitorch --bin bitorch
MODEL="$(scripts/fetch-model.sh)"
WORK="${TMPDIR:-/tmp}/bitorch-bench-distribution"
python3 scripts/bench_distribution.py "$CARGO_TARGET_DIR/debug/bitorch" "$MODEL" "$WORK" "$RATE"
