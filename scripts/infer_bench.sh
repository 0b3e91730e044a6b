#!/usr/bin/env bash
# Times `bitorch infer --chat --record-commitments --stats` (one process, the workers' kernel)
# and prints "TTFT_SECONDS TOKENS_PER_SECOND GENERATED_TOKENS" for the best of REPEATS runs by
# generated tokens/s; TTFT is that run's prompt (prefill and first token) time.
# Usage: scripts/infer_bench.sh BIN MODEL MAX_TOKENS PROMPT REPEATS
set -euo pipefail
BIN="$1"; MODEL="$2"; MAX="$3"; PROMPT="$4"; REPEATS="$5"
best=""
for _ in $(seq 1 "$REPEATS"); do
  line="$("$BIN" infer --model "$MODEL" --chat --record-commitments --max-tokens "$MAX" \
          --stats "$PROMPT" 2>&1 >/dev/null | grep '^prompt:')"
  best="$(python3 - "$line" "$best" <<'PY'
import re, sys
m = re.search(r"prompt: (\d+) tokens, ([\d.]+) tokens/s; generated: (\d+) tokens, ([\d.]+) tokens/s", sys.argv[1])
pt, pts, gt, gts = int(m[1]), float(m[2]), int(m[3]), float(m[4])
cur = f"{pt / pts:.3f} {gts:.2f} {gt}"
best = sys.argv[2]
print(cur if not best or float(best.split()[1]) < gts else best)
PY
)"
done
echo "$best"
