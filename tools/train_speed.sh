#!/usr/bin/env bash
# FP training speed, mixq vs PyTorch eager, side by side on the same model and step:
#   tools/train_speed.sh [ROUNDS] [WORKERS]   # WORKERS: mixq's data-parallel parts ("1 2")
# mixq: `cargo xtask bench train` on a dim-64 DeiT for 28x28 grey images (the fmnist-deit card
# with embed_dim 64); PyTorch: tools/train_speed.py (own venv .venv-tools, torch pinned in
# tools/requirements.txt). Alternates the two so machine noise hits both. CI does not run this.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORKERS=${2:-1 2}
VENV=${MIXQ_TOOLS_VENV:-.venv-tools}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tools/requirements.txt
fi
CARD=$(mktemp --suffix .toml)
sed -e 's/^name = .*/name = "fmnist-dim64"/' -e 's/^aliases = .*/aliases = ["fmnist-dim64"]/' \
    -e 's/^embed_dim = .*/embed_dim = 64/' -e '/^shipped = /d' -e 's/^weight_files = .*/weight_files = []/' \
    models/fmnist-deit.toml > "$CARD"
cargo build -q -p xtask --all-features
for _ in $(seq "$ROUNDS"); do
  for w in $WORKERS; do
    echo -n "workers $w: "
    cargo xtask bench train --model "$CARD" --images 512 --batches 128 --repeat 2 --workers "$w" | grep '^| fmnist'
  done
  "$VENV/bin/python" tools/train_speed.py --dim 64 --depth 6 --heads 4 --mlp-ratio 2 --batch 128 --images 512 --repeat 2
done
rm -f "$CARD"
