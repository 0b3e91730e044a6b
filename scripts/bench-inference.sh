#!/usr/bin/env bash
# Inference benchmark (issue 4): prompt and generation tokens/s on 2 threads for candle's
# quantized_llama, our engine with 1 and 3 in-process stages, and the commitment cost.
# Usage: scripts/bench-inference.sh [GEN_TOKENS] [PROMPT_TOKENS] [REPEATS] (each row: best of REPEATS)
# Then llama.cpp's row (llama-cpp-python from the cached venv of scripts/llama-venv.sh, 2
# threads, the same text and counts) and our default's ratio to it, and the same two for the
# model's Q4_0, Q8_0 and Q4_K_M files (scripts/quantize-variants.sh); BITORCH_NO_LLAMA=1 skips
# them.
# PROFILE=release gives release numbers (a long build); the default is the dev profile, which
# builds the engine, candle and gemm (where the time goes) fully optimized, as release does.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
MODEL="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
GEN="${1:-128}"; NPROMPT="${2:-21}"; REPEATS="${3:-2}"
OUT="$(mktemp)"
trap 'rm -f "$OUT"' EXIT
cargo run --quiet --profile "${PROFILE:-dev}" -p bitorch-inference --example bench -- \
  "$MODEL" "$GEN" "$NPROMPT" "$REPEATS" | tee "$OUT"
[ -n "${BITORCH_NO_LLAMA:-}" ] && exit 0
# llama.cpp in the same run: the same model, text and token counts, 2 threads, greedy.
PY="$(scripts/llama-venv.sh)"
read -r n lp lg <<<"$("$PY" scripts/bench_llama.py "$MODEL" "$GEN" "$NPROMPT" "$REPEATS")"
ours="$(grep '^| bitorch 1 stage, our integer kernels |' "$OUT" | head -1)"
op="$(echo "$ours" | awk -F'|' '{gsub(/ /, "", $3); print $3}')"
og="$(echo "$ours" | awk -F'|' '{gsub(/ /, "", $4); print $4}')"
echo
echo "| engine | prompt tok/s | gen tok/s | ours (1 stage, integer kernels) vs it: prompt | gen |"
echo "|---|---:|---:|---:|---:|"
awk -v n="$n" -v lp="$lp" -v lg="$lg" -v op="$op" -v og="$og" 'BEGIN {
  printf "| llama.cpp (llama-cpp-python 0.3.36, %d prompt tokens) | %.1f | %.1f | %.2fx | %.2fx |\n", n, lp, lg, op / lp, og / lg }'
# Other quantizations of the same model (scripts/quantize-variants.sh): our integer kernels
# (what bitorch infer runs) next to llama.cpp on each file, in this run.
VARIANTS="$(scripts/quantize-variants.sh)"
echo
echo "| file | ours prompt tok/s | ours gen tok/s | llama.cpp prompt tok/s | llama.cpp gen tok/s | prompt | gen |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for v in Q4_0 Q8_0 Q4_K_M; do
  f="$VARIANTS/SmolLM2-135M-Instruct.$v.gguf"
  row="$(BENCH_OURS_ONLY=1 cargo run --quiet --profile "${PROFILE:-dev}" -p bitorch-inference \
    --example bench -- "$f" "$GEN" "$NPROMPT" "$REPEATS" | grep '^| bitorch')"
  vp="$(echo "$row" | awk -F'|' '{gsub(/ /, "", $3); print $3}')"
  vg="$(echo "$row" | awk -F'|' '{gsub(/ /, "", $4); print $4}')"
  read -r _ vlp vlg <<<"$("$PY" scripts/bench_llama.py "$f" "$GEN" "$NPROMPT" "$REPEATS")"
  awk -v v="$v" -v a="$vp" -v b="$vg" -v c="$vlp" -v d="$vlg" 'BEGIN {
    printf "| %s | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", v, a, b, c, d, a / c, b / d }'
done
echo "BITORCH_NO_LLAMA=1 leaves llama.cpp (and these rows) out."
