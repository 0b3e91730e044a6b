#!/usr/bin/env bash
# What the browser test (tests/webapp.rs) needs: Debian's Chromium and npm's playwright-core
# (pinned) in a cache folder. Prints the folder to pass as BITORCH_PLAYWRIGHT_DIR. Only the
# tests need these: the node serves its web app without Node.js.
set -euo pipefail
VERSION=1.65.2
DIR="${BITORCH_PLAYWRIGHT_DIR:-$HOME/.cache/bitorch/web-test}"
# Only what is missing: a machine with NodeSource's nodejs (which carries npm) cannot also take
# Debian's npm package (they conflict).
PACKAGES=()
command -v chromium >/dev/null 2>&1 || PACKAGES+=(chromium)
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
if [ ${#PACKAGES[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi
if [ ! -f "$DIR/node_modules/playwright-core/package.json" ] \
  || ! grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/playwright-core/package.json"; then
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --silent --no-audit --no-fund --prefix "$DIR" "playwright-core@$VERSION" >&2)
fi
echo "$DIR"
