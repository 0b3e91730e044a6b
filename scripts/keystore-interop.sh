#!/usr/bin/env bash
# Prints the folder of polkadot.js' own keyring (@polkadot/keyring, from npm, pinned by
# scripts/keystore-interop/package-lock.json), cached in ~/.cache/bitorch/keystore-interop.
# Test-only: the keystore test checks that bitorch's key files open in polkadot.js and back
# (BITORCH_POLKADOT_JS). Running a node needs no Node.js.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/keystore-interop" && pwd)"
DIR="${BITORCH_POLKADOT_JS_DIR:-$HOME/.cache/bitorch/keystore-interop}"
mkdir -p "$DIR"
if ! cmp -s "$SRC/package-lock.json" "$DIR/package-lock.json" || [ ! -d "$DIR/node_modules/@polkadot/keyring" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >&2
  fi
  cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR/"
  (cd "$DIR" && npm ci --no-audit --no-fund --silent >&2)
fi
cp "$SRC/interop.mjs" "$DIR/"
echo "$DIR"
