#!/usr/bin/env bash
# Detection of cheating workers at the chain's default audit probability, through real nodes
# (scripts/bench_detection.py): for each cheat, a 4-validator loopback testnet where Bob serves
# layers 10..30 cheating that way, REQUESTS short chat completions, then Bob's claims: how many
# the chain audited against the expected number, how many caught him, what he was paid, and
# the honest claims wrongly failed (must be 0).
# Usage: scripts/bench-detection.sh [REQUESTS] [CHEAT...]
#   CHEAT: random-outputs skip-layers other-weights other-trace other-logits refuse-openings (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
N="${1:-200}"; shift || true
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(random-outputs skip-layers other-weights other-trace other-logits refuse-openings)
MODEL="$(scripts/fetch-model.sh)"
scripts/install-deps.sh
cargo build -q -p bitorch --bin bitorch
WORK="$(mktemp -d -t bitorch-detection.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
python3 scripts/bench_detection.py "$CARGO_TARGET_DIR/debug/bitorch" "$MODEL" "$WORK" "$N" "${MODES[@]}"
