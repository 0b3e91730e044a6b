#!/usr/bin/env bash
# Benchmark: peers behind NAT (root only). Runs tests/reachability.rs N times (default 20): each
# time a worker and a gateway start behind two NAT routers of network namespaces, meet through a
# public relay and answer a chat. Prints, per try, whether hole punching made the gateway's
# connection to the worker direct and when (seconds after the nodes were started: the model's
# import and registration come first), then the success rate and the median.
# Usage: sudo scripts/bench-nat.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
N="${1:-20}"
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-nat.sh needs root (network namespaces)" >&2
  exit 2
fi
BITORCH_TEST_MODEL="${BITORCH_TEST_MODEL:-$(scripts/fetch-model.sh)}"
export BITORCH_TEST_MODEL
cargo test -q --workspace --test reachability --no-run
printf '%-4s %-8s %-14s %-14s %s\n' try direct "direct at (s)" "reserved (s)" "answer (s)"
ok=0
times=()
for i in $(seq 1 "$N"); do
  out="$(cargo test -q --workspace --test reachability -- --nocapture 2>&1 || true)"
  direct="$(sed -n 's/.*NATed worker direct: \(true\|false\) at \([0-9.]*\) s.*/\1 \2/p' <<<"$out")"
  reserved="$(sed -n 's/^both NATed nodes reserved on the relay: \([0-9.]*\) s.*/\1/p' <<<"$out")"
  answer="$(sed -n 's/^answer in \([0-9.]*\) s.*/\1/p' <<<"$out")"
  if [ -z "$direct" ]; then
    printf '%-4s %s\n' "$i" "failed: $(grep -m1 -E 'panicked|SKIPPED' <<<"$out" || echo 'no output')"
    continue
  fi
  read -r d at <<<"$direct"
  printf '%-4s %-8s %-14s %-14s %s\n' "$i" "$d" "$at" "$reserved" "$answer"
  if [ "$d" = true ]; then
    ok=$((ok + 1))
    times+=("$at")
  fi
done
median="-"
if [ "${#times[@]}" -gt 0 ]; then
  median="$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
fi
echo "hole punching: $ok of $N direct; median time from start to direct: $median s"
