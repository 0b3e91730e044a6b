#!/usr/bin/env bash
# Builds and starts a one-node dev chain (Alice validates, blocks every second) with JSON-RPC
# on 127.0.0.1:9944 that serves the real test model (SmolLM2-135M-Instruct, fetched by
# scripts/fetch-model.sh) as a worker, with the OpenAI-compatible API on 127.0.0.1:8080
# (requests are paid from //Alice; the worker is //Alice too unless --worker-key is given).
# Data lives in $BITORCH_BASE (default ~/.local/share/bitorch-dev), so a restart resumes the
# chain; `bitorch purge-chain --base-path "$BITORCH_BASE" -y` starts over.
# Extra arguments go to `bitorch node`; BITORCH_NO_MODEL=1 runs the chain alone.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
BASE="${BITORCH_BASE:-$HOME/.local/share/bitorch-dev}"
cargo build -p bitorch --bin bitorch
if [ -n "${BITORCH_NO_MODEL:-}" ]; then
  exec "$CARGO_TARGET_DIR/debug/bitorch" node --dev --base-path "$BASE" "$@"
fi
MODEL="$(scripts/fetch-model.sh)"
API_PORT="${BITORCH_API_PORT:-8080}"
cat >&2 <<MSG

Serving $MODEL. Once the node logs "OpenAI-compatible API", try:

  curl -N http://127.0.0.1:$API_PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "temperature": 0, "stream": true, "max_tokens": 64,
         "messages": [{"role": "user", "content": "What is the capital of France?"}]}'

(GET http://127.0.0.1:$API_PORT/v1/models lists the model's id.)

MSG
exec "$CARGO_TARGET_DIR/debug/bitorch" node --dev --base-path "$BASE" \
  --serve-model "$MODEL" --api-port "$API_PORT" "$@"
