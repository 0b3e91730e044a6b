#!/usr/bin/env bash
# Runs the whole test suite: unit, property, RPC and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# No incremental caches: in a target directory kept between runs they grow by gigabytes with
# every change (41 GB of them filled this machine's disk), and a test build gains little from them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Model tests use the real SmolLM2 model; fetch it once (cached) unless a path is given.
if [ -z "${BITORCH_TEST_MODEL:-}" ]; then
  BITORCH_TEST_MODEL="$(scripts/fetch-model.sh)"
  export BITORCH_TEST_MODEL
fi
# The official OpenAI Python client talks to the API in one test (a cached virtualenv).
if [ -z "${BITORCH_OPENAI_PYTHON:-}" ]; then
  BITORCH_OPENAI_PYTHON="$(scripts/openai-venv.sh)"
  export BITORCH_OPENAI_PYTHON
fi
# polkadot.js' own keyring (npm, cached) opens bitorch's key files in one test.
if [ -z "${BITORCH_POLKADOT_JS:-}" ]; then
  BITORCH_POLKADOT_JS="$(scripts/keystore-interop.sh)"
  export BITORCH_POLKADOT_JS
fi
# Debian's Chromium and npm's playwright-core (cached) drive the web app in one test.
if [ -z "${BITORCH_PLAYWRIGHT_DIR:-}" ]; then
  BITORCH_PLAYWRIGHT_DIR="$(scripts/web-test-deps.sh)"
  export BITORCH_PLAYWRIGHT_DIR
fi
exec cargo test --workspace "$@"
