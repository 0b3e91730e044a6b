#!/usr/bin/env bash
# Prints the path of a Python that has llama.cpp's Python package with its OpenAI-compatible
# server (llama-cpp-python[server] 0.3.36, the speed reference of the benchmarks), from a
# virtual environment cached in ~/.cache/bitorch/llama-venv. The first run builds llama.cpp
# from the PyPI source package: about 5 minutes on 2 cores. AMX is off: on these VMs a build
# with AMX crashes.
set -euo pipefail
VENV="${BITORCH_LLAMA_VENV:-$HOME/.cache/bitorch/llama-venv}"
if ! "$VENV/bin/python" -c "import llama_cpp.server" >/dev/null 2>&1; then
  python3 -m venv "$VENV" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$VENV/bin/pip" install -q --disable-pip-version-check "llama-cpp-python[server]==0.3.36" >&2
fi
echo "$VENV/bin/python"
