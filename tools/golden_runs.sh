#!/usr/bin/env bash
# Behaviour check for refactors: runs a fixed set of seeded commands and keeps what they
# print and write (tables, results.json, plans), minus times and paths, under OUT_DIR.
#   tools/golden_runs.sh OUT_DIR            # e.g. before a change
#   tools/golden_runs.sh OUT_DIR2 && diff -r OUT_DIR OUT_DIR2
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:?usage: tools/golden_runs.sh OUT_DIR}")
mkdir -p "$OUT"
cargo build -q -p xtask --all-features
BIN=${CARGO_TARGET_DIR:-target}/debug/xtask
# One command: its stdout table rows and the files of the run folder it writes.
run() {
  local name=$1; shift
  local runs; runs=$(mktemp -d)
  "$BIN" "$@" --runs "$runs" > "$OUT/$name.stdout" 2> "$OUT/$name.stderr" || {
    echo "$name failed: $(tail -3 "$OUT/$name.stderr")"; return 1; }
  # Keep table rows only: progress, timings and paths differ between runs.
  { grep '^|' "$OUT/$name.stdout" || true; } | python3 tools/golden_table.py > "$OUT/$name.table"
  rm "$OUT/$name.stdout" "$OUT/$name.stderr"
  for f in "$runs"/*/*.tsv; do
    [ -e "$f" ] || continue
    awk -F'\t' -v OFS='\t' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /seconds/) t[i] = 1 }
      NR > 1 { for (i in t) $i = "T" } { print }' "$f" > "$OUT/$name.$(basename "$f")"
  done
  for f in "$runs"/*/*.json "$runs"/*/*.toml; do
    [ -e "$f" ] || continue
    sed -E -e 's/"([a-z_]*(seconds|elapsed|wall|per_s)[a-z_]*)": [0-9.e+-]+/"\1": T/' \
      -e 's#/tmp/tmp\.[A-Za-z0-9]+#TMP#g' -e "s#$OUT#OUT#g" "$f" > "$OUT/$name.$(basename "$f")"
  done
  rm -rf "$runs"
  echo "$name ok"
}
run ptq-deit ptq --model digits-deit --bits 4,3 --ablation --seeds 0,1
run ptq-swin ptq --model digits-swin --bits 8,4
run ptq-fmnist ptq --model fmnist-deit --bits 4 --eval 1000
run ptq-mixed ptq --model digits-deit --mixed --avg-bits 4 --eval 200 --no-block-cache
run ptq-pose ptq --model wtpose-tiny --weights models/wtpose-tiny.safetensors --bits 8 --synthetic 40
run sensitivity sensitivity --model digits-deit --no-block-cache
run qat qat --model digits-deit --w-bits 4 --a-bits 4 --epochs 1 --limit 64 --eval 64
run lrp lrp --model digits-deit --images 4
run train train --model digits-deit --limit 64 --epochs 2 --batch 16 --out "$OUT/train.safetensors"
md5sum < "$OUT/train.safetensors" > "$OUT/train.md5" && rm "$OUT/train.safetensors"
