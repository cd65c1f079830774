#!/usr/bin/env bash
# Peer check of a shipped checkpoint against timm (tools/timm_peer_check.py):
#   tools/timm_peer_check.sh fmnist-deit [IDX_DIR]
# Builds mixq the README's way (`cargo xtask`, the dev profile), writes mixq's logits on the 10,000 test images, makes its own
# Python venv (.venv-tools, git-ignored; torch/timm pinned in tools/requirements.txt) and runs
# the comparison. CI does not run Python; this is for the person shipping a checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: tools/timm_peer_check.sh MODEL [IDX_DIR]}
DATA=${2:-/usr/share/datasets/fashion-mnist}
VENV=${MIXQ_TOOLS_VENV:-.venv-tools}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tools/requirements.txt
fi
OUT=$(mktemp -d)
cargo xtask eval --model "$MODEL" --data "$DATA" --batch 250 --logits "$OUT/logits.safetensors"
"$VENV/bin/python" tools/timm_peer_check.py "models/$MODEL.toml" "$OUT/logits.safetensors" "$DATA"
