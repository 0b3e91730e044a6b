#!/usr/bin/env bash
# Audits of honest work across thread counts (node/compute/benches/audits.rs): N sessions of
# layers 0..10 of the real test model generated with 1 thread and audited with 2, and the
# other way round. Prints, per direction: audits, false accusations (must be 0), bit-exact
# re-executions, the auditor's seconds against the generation's, that share at the chain's
# 10% base audit rate, and the trace bytes kept per position; then, for each direction, how
# many audits' probes from a 1-thread and a 2-thread auditor agree by the chain's rule (an
# honest auditor whose probe matched no other's would lose its verdict: must be all).
# A last row audits N/10 longer sessions (126 positions) at 2 threads, and two more N/10
# sessions of the whole model as one stage (first and last: its logits checked too).
# Usage: scripts/bench-audits.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bitorch/target}"
# Built as scripts/test.sh builds (no incremental caches), so that they share the artifacts.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
N="${1:-250}"
BITORCH_TEST_MODEL="$(scripts/fetch-model.sh)"
export BITORCH_TEST_MODEL
cargo bench -q -p bitorch-compute --bench audits --no-run
BIN="$(ls -t "$CARGO_TARGET_DIR"/release/deps/audits-* | grep -v '\.d$' | head -1)"
WORK="$(mktemp -d -t bitorch-audits.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
printf '\n%-28s %7s %8s %10s %10s %9s %14s %12s\n' "layers 0..10, $N sessions" audits accused bit-exact "audit s" "gen s" "% at p=10%" "bytes/pos"
for pair in "1 2" "2 1"; do
  read -r gen ver <<<"$pair"
  RAYON_NUM_THREADS="$gen" "$BIN" generate "$WORK/$gen" "$N"
  read -r audits accused exact secs gen_secs share per <<<"$(RAYON_NUM_THREADS="$ver" "$BIN" verify "$WORK/$gen" "$WORK/probes-$gen-$ver")"
  printf '%-28s %7s %8s %10s %10s %9s %14s %12s\n' "worker $gen thr, auditor $ver" "$audits" "$accused" "$exact" "$secs" "$gen_secs" "$share" "$per"
  RAYON_NUM_THREADS="$gen" "$BIN" verify "$WORK/$gen" "$WORK/probes-$gen-$gen" >/dev/null
done
# Longer sessions (a 6-token prompt and 120 tokens, as a chat answer): the audit's one batched
# pass against the generation's 121 steps.
LONG=$(( (N + 9) / 10 ))
RAYON_NUM_THREADS=2 "$BIN" generate "$WORK/long" "$LONG" 120
read -r audits accused exact secs gen_secs share per <<<"$(RAYON_NUM_THREADS=2 "$BIN" verify "$WORK/long" "$WORK/probes-long")"
printf '%-28s %7s %8s %10s %10s %9s %14s %12s\n' "126 positions, 2 thr" "$audits" "$accused" "$exact" "$secs" "$gen_secs" "$share" "$per"
# The whole model as one stage, first and last (token rows in, logits committed at the prompt's
# last position and each step's; a last stage's audits open the whole claim), N/10 sessions.
for pair in "1 2" "2 1"; do
  read -r gen ver <<<"$pair"
  BITORCH_AUDIT_LAYERS=0..30 RAYON_NUM_THREADS="$gen" "$BIN" generate "$WORK/whole-$gen" "$LONG"
  read -r audits accused exact secs gen_secs share per <<<"$(BITORCH_AUDIT_LAYERS=0..30 RAYON_NUM_THREADS="$ver" "$BIN" verify "$WORK/whole-$gen" "$WORK/probes-whole-$gen")"
  printf '%-28s %7s %8s %10s %10s %9s %14s %12s\n' "0..30+logits, $gen vs $ver thr" "$audits" "$accused" "$exact" "$secs" "$gen_secs" "$share" "$per"
done
printf '\n%-28s %7s %14s %10s\n' "probes, auditor 1 vs 2 thr" audits agreeing identical
for gen in 1 2; do
  other=$((3 - gen))
  read -r n agreeing identical <<<"$("$BIN" agree "$WORK/probes-$gen-$gen" "$WORK/probes-$gen-$other")"
  printf '%-28s %7s %14s %10s\n' "worker $gen thr" "$n" "$agreeing" "$identical"
done
