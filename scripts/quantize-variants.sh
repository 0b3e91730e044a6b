#!/usr/bin/env bash
# Other quantizations of the test model for the benchmarks: Q4_0, Q8_0 and Q4_K_M (which on
# SmolLM2-135M is mostly Q5_0, with Q4_K/Q6_K where rows are whole super-blocks of 256 and Q8_0
# for attn_v), made by llama.cpp's own quantizer (llama-cpp-python, the venv of
# scripts/llama-venv.sh) from the Q4_1 file: requantized, so they are a little worse than
# quantizing the original weights, but each is a real file of its type. Cached; prints the
# directory. Usage: scripts/quantize-variants.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
DIR="${BITORCH_CACHE:-$HOME/.cache/bitorch}/models/variants"
mkdir -p "$DIR"
PY="$(scripts/llama-venv.sh)"
"$PY" - "$SRC" "$DIR" >&2 <<'PY'
import ctypes, os, sys
import llama_cpp
src, out_dir = sys.argv[1], sys.argv[2]
# llama.cpp's file types: Q4_0 = 2, Q8_0 = 7, Q4_K_M = 15.
for name, ftype in [("Q4_0", 2), ("Q8_0", 7), ("Q4_K_M", 15)]:
    out = os.path.join(out_dir, f"SmolLM2-135M-Instruct.{name}.gguf")
    if os.path.exists(out):
        continue
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.allow_requantize, p.nthread = ftype, True, 2
    tmp = out + ".part"
    if llama_cpp.llama_model_quantize(src.encode(), tmp.encode(), ctypes.byref(p)) != 0:
        sys.exit(f"quantizing to {name} failed")
    os.replace(tmp, out)
PY
echo "$DIR"
