#!/usr/bin/env bash
# Rebuilds node/api/web/crypto.js, the one built asset of the web app: polkadot.js' sr25519
# keys and signatures for the wallet page, bundled by esbuild from node/api/web-src (versions
# pinned in its package.json and package-lock.json). The result is committed and embedded in
# the binary, so running a node needs no Node.js. `--check` rebuilds into a temporary file and
# fails if it differs from the committed one (the asset is reproducible from the repository).
set -euo pipefail
cd "$(dirname "$0")/../node/api/web-src"
npm ci --silent --no-audit --no-fund >&2
out=../web/crypto.js
if [ "${1:-}" = "--check" ]; then
  out="$(mktemp --suffix=.js)"
  trap 'rm -f "$out"' EXIT
fi
npx esbuild crypto.mjs --bundle --format=esm --minify --legal-comments=none --target=es2020 \
  --log-level=warning --outfile="$out"
if [ "${1:-}" = "--check" ]; then
  cmp -s "$out" ../web/crypto.js || { echo "node/api/web/crypto.js differs from a rebuild: run scripts/build-web.sh" >&2; exit 1; }
  echo "node/api/web/crypto.js is what its sources build" >&2
fi
