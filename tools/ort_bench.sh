#!/usr/bin/env bash
# Side-by-side CPU benchmark of DeiT-S (random weights): mixq's integer engine and burn-flex
# f32 (`cargo xtask bench-int`), then ONNX Runtime (fp32, static QDQ int8, dynamic int8) and
# PyTorch (fp32, dynamic int8) on the *same* weights, in one session.
#
#   tools/ort_bench.sh [WEIGHTS.safetensors]
#
# Without WEIGHTS it first runs `cargo run --release -p xtask -- bench-int --save-weights ...`
# (which prints the Rust table and writes the random weights with timm's key names).
# Makes its own Python venv (target/.venv-ort, git-ignored; MIXQ_ORT_VENV overrides) from PyPI.
# THREADS (default 2), IMAGES (default 16), REPEAT (default 3) tune the measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIXQ_ORT_VENV:-target/.venv-ort}
THREADS=${THREADS:-2}
IMAGES=${IMAGES:-16}
REPEAT=${REPEAT:-3}
OUT=${OUT:-target/ort-bench}
mkdir -p "$OUT"
WEIGHTS=${1:-}
if [ -z "$WEIGHTS" ]; then
  WEIGHTS="$OUT/deit-s-random.safetensors"
  cargo run --release -q -p xtask -- bench-int --model deit-s --batches 1,8 \
    --images "$IMAGES" --repeat "$REPEAT" --save-weights "$WEIGHTS" --json "$OUT/mixq.json"
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tools/requirements-ort.txt
"$VENV/bin/python" tools/ort_bench.py --weights "$WEIGHTS" --threads "$THREADS" \
  --images "$IMAGES" --repeat "$REPEAT" --workdir "$OUT"
