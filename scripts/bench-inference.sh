#!/usr/bin/env bash
# Inference benchmark (issue 4): prompt and generation tokens/s on 2 threads for candle's
# quantized_llama, our engine with 1 and 3 in-process stages, and the commitment cost.
# Usage: scripts/bench-inference.sh [GEN_TOKENS] [PROMPT_TOKENS] [REPEATS] (each row: best of REPEATS)
# PROFILE=release gives release numbers (a long build); the default is the dev profile, which
# builds the engine, candle and gemm (where the time goes) fully optimized, as release does.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
MODEL="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
exec cargo run --quiet --profile "${PROFILE:-dev}" -p bitorch-inference --example bench -- \
  "$MODEL" "${1:-128}" "${2:-21}" "${3:-2}"
