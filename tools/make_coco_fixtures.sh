#!/usr/bin/env bash
# Regenerates the committed COCO keypoint evaluation fixtures (tests/fixtures/coco)
# from pycocotools. Makes its own Python venv (.venv-tools-coco, git-ignored via
# MIXQ_COCO_VENV or the default below) with pinned pycocotools/numpy from PyPI.
# CI never runs this: it uses the committed files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIXQ_COCO_VENV:-.venv-tools/coco}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tools/requirements-coco.txt
"$VENV/bin/python" tools/make_coco_fixtures.py tests/fixtures/coco
