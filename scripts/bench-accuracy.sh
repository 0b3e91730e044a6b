#!/usr/bin/env bash
# Accuracy of the engine's default path (integer kernels, 16-bit activations) on 24 chat
# prompts with known answers (inference/examples/accuracy_prompts.tsv), next to the weights
# dequantized to f32 (the reference, same engine) and llama.cpp (llama-cpp-python, the venv of
# scripts/llama-venv.sh) on the same GGUF file, in one run: how many greedy answers (48 tokens at
# most) contain an accepted answer, and the worst relative logit error of ours against the
# reference while both choose the same tokens. Per-prompt answers go to stderr.
# Usage: scripts/bench-accuracy.sh [MODEL.gguf] (default: the test model)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
MODEL="${1:-${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}}"
PROMPTS=inference/examples/accuracy_prompts.tsv
ours="$(cargo run --quiet -p bitorch-inference --example accuracy -- "$MODEL" "$PROMPTS" | tee /dev/stderr | tail -1)"
PY="$(scripts/llama-venv.sh)"
llama="$("$PY" scripts/accuracy_llama.py "$MODEL" "$PROMPTS" | tee /dev/stderr | tail -1)"
read -r _ o r _ n _ _ _ _ worst _ toks _ <<<"${ours//;/}"
read -r _ l _ _ <<<"$llama"
echo
echo "| $(basename "$MODEL"), $n chat prompts | correct answers |"
echo "|---|---:|"
echo "| bitorch, integer kernels (default) | $o |"
echo "| bitorch, weights dequantized to f32 (reference) | $r |"
echo "| llama.cpp (llama-cpp-python 0.3.36) | $l |"
echo "worst relative logit error, integer kernels vs reference: $worst over $toks tokens"
