#!/usr/bin/env bash
# Regenerates the committed parity fixtures (tests/fixtures) from timm.
# Makes its own Python venv (.venv-tools, git-ignored) with pinned torch/timm from PyPI.
# CI never runs this: it uses the committed files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MIXQ_TOOLS_VENV:-.venv-tools}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tools/requirements.txt
"$VENV/bin/python" tools/make_fixtures.py tests/fixtures
"$VENV/bin/python" tools/lrp_reference.py tests/fixtures
