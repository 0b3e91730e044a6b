#!/usr/bin/env bash
# Benchmark: generation through a relay vs direct (root only). Runs tests/reachability.rs twice
# in one sitting, every host DELAY_MS from the wire (round trips of 2 x DELAY_MS between hosts):
# a gateway (layers 0..15) and a worker (15..30) each behind its own NAT, meeting through a
# public relay; once behind symmetric NATs (hole punching fails, every token crosses the relay)
# and once behind ordinary ones (hole punching makes the connection direct). Prints the tokens/s
# of a 48-token answer (best of 3) for each and the ratio.
# Usage: sudo scripts/bench-relay.sh [DELAY_MS]   (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
DELAY="${1:-25}"
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-relay.sh needs root (network namespaces)" >&2
  exit 2
fi
BITORCH_TEST_MODEL="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
export BITORCH_TEST_MODEL BITORCH_DELAY_MS="$DELAY"
cargo test -q --workspace --test reachability --no-run
run() { # nat kind
  local out
  out="$(BITORCH_NAT="$1" cargo test -q --workspace --test reachability -- --nocapture 2>&1 || true)"
  local line
  line="$(sed -n 's/^generation through the NATed worker (\(.*\)): \([0-9.]*\) tok\/s/\1 \2/p' <<<"$out")"
  if [ -z "$line" ]; then
    echo "failed ($1): $(grep -m1 -E 'panicked|SKIPPED' <<<"$out" || echo 'no output')" >&2
    exit 1
  fi
  echo "$line"
}
read -r relayed_kind relayed <<<"$(run symmetric)"
read -r direct_kind direct <<<"$(run ordinary)"
printf '%-22s %-12s %s\n' "NATs" connection "tok/s (48 tokens, best of 3)"
printf '%-22s %-12s %s\n' "symmetric (relayed)" "$relayed_kind" "$relayed"
printf '%-22s %-12s %s\n' "ordinary (hole punch)" "$direct_kind" "$direct"
awk -v r="$relayed" -v d="$direct" -v ms="$DELAY" \
  'BEGIN { printf "relayed / direct: %.2fx at %d ms round trips between hosts\n", r / d, 2 * ms }'
