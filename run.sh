#!/usr/bin/env bash
# The two commands of a fresh clone. Each installs what it needs into .venv (once; a later run
# reuses it, and reinstalls only when pyproject.toml changes), then runs:
#   bash run.sh train [main.py flags]    the published recipe (default flags below)
#   bash run.sh test [pytest flags]      the test suite
# The JAX CUDA extra is added where nvidia-smi finds an NVIDIA GPU. PYTHON picks the interpreter
# (3.11.4 or newer); TORCH pins the PyTorch the tests use (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-}
case "$what" in
  train) extras=""; shift ;;
  test) extras="torch,test,tfds"; shift ;;
  *) echo "usage: bash run.sh train [main.py flags] | bash run.sh test [pytest flags]" >&2; exit 2 ;;
esac
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="${extras:+$extras,}cuda13"
fi
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)-${extras//,/-}"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [[ "$extras" == *torch* ]]; then  # pinned first: an open range may pull a multi-GB CUDA build
    .venv/bin/python -m pip install -q "${TORCH:-torch==2.13.0}"
  fi
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
if [ "$what" = train ]; then
  [ $# -gt 0 ] || set -- --config configs/seresnet.py --workdir runs/seresnet
  exec .venv/bin/python main.py "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
