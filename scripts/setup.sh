#!/usr/bin/env bash
# Creates .venv at the repository root and installs flamingo-vlm into it.
#   bash scripts/setup.sh          # the library, CLI and everything the quickstart needs
#   bash scripts/setup.sh dev      # plus the test, lint and reference-parity tools
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch and torchvision first, pinned (the pair that imports together; see constraints.txt)
"${PIP[@]}" install -c constraints.txt torch torchvision 2>&1 | grep -v "is ignored" || true
extras="open-clip,eval,build,serve,train"
if [ "${1:-}" = "dev" ]; then extras="$extras,dev"; fi
"${PIP[@]}" install -c constraints.txt -e ".[${extras}]" 2>&1 | grep -v "is ignored" || true
if [ "${1:-}" = "dev" ]; then
  # The reference implementation for parity tests and benchmarks; its metadata pins an old torch, hence --no-deps.
  "${PIP[@]}" install --no-deps open-flamingo==2.0.1 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/python -c "import flamingo, torch, transformers; print('flamingo-vlm ready: torch', torch.__version__, 'transformers', transformers.__version__)"
