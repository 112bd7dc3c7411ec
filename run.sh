#!/usr/bin/env bash
# The two commands of a fresh clone. Each installs what it needs into .venv (once; a later run
# reuses it, and reinstalls only when pyproject.toml or the lock changes), then runs:
#   bash run.sh train [main.py flags]    the published recipe (default flags below)
#   bash run.sh test [pytest flags]      the test suite
#   bash run.sh extras                   prints the extras it would install here
# The versions are those of requirements-lock.txt, the set the tests pass with. The JAX CUDA
# extra follows the NVIDIA driver's CUDA version (nvidia-smi): cuda12 for 12.x, cuda13 for 13
# or newer. PYTHON picks the interpreter (3.11.4 or newer); TORCH pins the PyTorch the tests use.
set -euo pipefail
cd "$(dirname "$0")"
what=${1:-}
case "$what" in
  train) extras=""; shift ;;
  test) extras="torch,test,tfds,onnx"; shift ;;
  extras) extras=""; shift ;;
  *) echo "usage: bash run.sh train [main.py flags] | bash run.sh test [pytest flags]" >&2; exit 2 ;;
esac
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1)
  case "$cuda" in
    12) extras="${extras:+$extras,}cuda12" ;;
    1[3-9]|[2-9][0-9]) extras="${extras:+$extras,}cuda13" ;;
    *) echo "run.sh: the NVIDIA driver supports CUDA '${cuda:-?}'; JAX needs 12 or newer:" \
            "installing the CPU build (update the driver for the GPU)" >&2 ;;
  esac
fi
if [ "$what" = extras ]; then
  echo "${extras:-none}"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml requirements-lock.txt | cksum | cut -d' ' -f1)-${extras//,/-}"
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if [[ "$extras" == *torch* ]]; then  # pinned first: an open range may pull a multi-GB CUDA build
    cpu_index=https://download.pytorch.org/whl/cpu
    where=()  # without a GPU, PyTorch's CPU-only wheel (PyPI's is the CUDA build) when reachable
    if [[ "$extras" != *cuda* ]] && command -v curl >/dev/null &&
        curl -sf -m 5 -o /dev/null "$cpu_index/torch/"; then
      where=(--index-url "$cpu_index" --extra-index-url https://pypi.org/simple)
    fi
    .venv/bin/python -m pip install -q "${where[@]}" "${TORCH:-torch==2.13.0}"
  fi
  .venv/bin/python -m pip install -q -c requirements-lock.txt -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
if [ "$what" = train ]; then
  [ $# -gt 0 ] || set -- --config configs/seresnet.py --workdir runs/seresnet
  exec .venv/bin/python main.py "$@"
fi
exec .venv/bin/python -m pytest -q -n 2 "$@"  # two workers: the tests wait on subprocesses often
