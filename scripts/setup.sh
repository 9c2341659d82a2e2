#!/usr/bin/env bash
# Creates .venv at the repository root and installs flamingo-vlm into it.
#   bash scripts/setup.sh          # the library, CLI and everything the quickstart needs
#   bash scripts/setup.sh dev      # plus the test, lint and reference-parity tools
# The pinned set (constraints.txt) is installed with uv, which unpacks the ~4 GB of CUDA wheels that torch
# brings in parallel (about 30 s instead of pip's 4 minutes on a 2-core machine). If uv cannot be installed or
# fails, pip installs the same set; FLAMINGO_SETUP_PIP=1 forces pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# The quickstart runs open-clip (its tiny CLIP), build (the corpus builder), train and eval (its benchmark and
# report); serve and demo let `flamingo serve` open its model with the web demo. dev adds the tests' tools and docs.
extras="open-clip,eval,corpus,train,serve,demo"
if [ "${1:-}" = "dev" ]; then extras="$extras,dev"; fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# Runs a command with pip's "constraint ... is ignored" notes filtered out of its output, and returns the
# command's own exit status (not grep's), so that a failed install stops the script.
quiet() {
  local status
  set +e
  "$@" 2>&1 | grep -v "is ignored"
  status=${PIPESTATUS[0]}
  set -e
  return "$status"
}

install_with_uv() {
  quiet "${PIP[@]}" install -c constraints.txt uv || return 1
  local UV_ARGS
  eval "$(.venv/bin/python scripts/uv_args.py)"  # pip's indexes, wheel folders, constraints and certificates
  local UV=(.venv/bin/uv pip install -q --python .venv/bin/python "${UV_ARGS[@]}" -c constraints.txt)
  "${UV[@]}" torch torchvision -e ".[${extras}]" || return 1
  if [ "${1:-}" = "dev" ]; then
    # The reference implementation for parity tests and benchmarks; its metadata pins an old torch, hence --no-deps.
    "${UV[@]}" --no-deps open-flamingo==2.0.1 || return 1
  fi
}

install_with_pip() {
  # torch and torchvision first, pinned (the pair that imports together; see constraints.txt)
  quiet "${PIP[@]}" install -c constraints.txt torch torchvision
  quiet "${PIP[@]}" install -c constraints.txt -e ".[${extras}]"
  if [ "${1:-}" = "dev" ]; then
    quiet "${PIP[@]}" install --no-deps open-flamingo==2.0.1
  fi
}

if [ "${FLAMINGO_SETUP_PIP:-0}" = "1" ] || ! install_with_uv "${1:-}"; then
  [ "${FLAMINGO_SETUP_PIP:-0}" = "1" ] || echo "setup: uv failed; installing with pip instead" >&2
  install_with_pip "${1:-}"
fi
.venv/bin/python -c "import flamingo, torch, transformers; print('flamingo-vlm ready: torch', torch.__version__, 'transformers', transformers.__version__)"
