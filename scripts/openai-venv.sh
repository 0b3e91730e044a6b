#!/usr/bin/env bash
# Prints the path of a Python that has the official `openai` client package, from a virtual
# environment cached in ~/.cache/bitorch/venv (created and filled from PyPI on first use).
# The tests use it for the OpenAI-client test (BITORCH_OPENAI_PYTHON).
set -euo pipefail
VENV="${BITORCH_VENV:-$HOME/.cache/bitorch/venv}"
if ! "$VENV/bin/python" -c "import openai" >/dev/null 2>&1; then
  if ! python3 -m venv "$VENV" >&2; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >&2
    python3 -m venv "$VENV" >&2
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "openai>=1,<4" >&2
fi
echo "$VENV/bin/python"
