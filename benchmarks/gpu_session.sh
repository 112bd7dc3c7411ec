#!/usr/bin/env bash
# The project's GPU checks, in three parts that also carry real CIFAR-10 to the GPU machine
# (a call carries at most 64 MiB: two batch files per part). Run from the repository root:
#   bash benchmarks/gpu_session.sh a   # env check, JAX throughput rows      (data_batch_1, 2)
#   bash benchmarks/gpu_session.sh b   # PyTorch throughput rows, one table   (data_batch_3, 4)
#   bash benchmarks/gpu_session.sh c   # configs/fast.py x 3 seeds, then the published recipe
#                                      # cut to 40 epochs while time is left (the rest)
# Logs go to $OUT (or ./gpu_out); state between parts lives in /root (cifar, caches, results).
set -uo pipefail
part=${1:?part a, b or c}
OUT=${OUT:-gpu_out}; mkdir -p "$OUT" /root/cifar /root/site
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site:$PWD
export JAX_COMPILATION_CACHE_DIR=/root/jax_cache   # later parts and seeds reuse compilations
export XLA_PYTHON_CLIENT_PREALLOCATE=false
DATA=/root/cifar
[ -d .gpu-data/$part ] && cp .gpu-data/$part/* $DATA/
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /root/site .whl/*.whl
fi
start=$(date +%s)

case $part in
a)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, jax, flax, optax, orbax.checkpoint as o, torch; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
  python3 benchmarks/throughput.py --parts=jax --jax_rows=float32:128,bfloat16:128,bfloat16:512 \
    --augment_overhead_row=bfloat16:512 --epoch_loop_row=float32:128 \
    --out /root/throughput_jax.json 2>&1 | tee "$OUT/throughput_jax.log"
  ;;
b)
  python3 benchmarks/throughput.py --parts=torch --out /root/throughput_torch.json 2>&1 \
    | tee "$OUT/throughput_torch.log"
  python3 benchmarks/merge_throughput.py /root/throughput_jax.json /root/throughput_torch.json \
    | tee "$OUT/throughput.md"
  ;;
c)
  budget=${BUDGET_S:-560}   # stop starting runs that would not finish inside this call
  epochs=$(python3 - <<'PY'
import json
rows = json.load(open('/root/throughput_jax.json'))['rows']
img_s = next(r['img_per_s'] for r in rows if r['variant'] == 'jit bfloat16' and r['batch'] == 512)
# 50 s of training at the measured step rate (49,664 images an epoch), within 30..80 epochs.
print(max(30, min(80, int(50 * img_s * 0.95 / 49664))))
PY
)
  echo "fast: num_epochs=$epochs"
  for seed in 0 1 2; do
    python3 main.py --config configs/fast.py --workdir /root/runs/fast_seed$seed \
      --config.seed=$seed --config.num_epochs=$epochs --config.data_dir=$DATA \
      2>&1 | tee "$OUT/fast_seed$seed.log"
  done
  left=$(( budget - ($(date +%s) - start) ))
  echo "seconds left for the 40-epoch published recipe: $left"
  if [ "$left" -gt 170 ]; then
    python3 main.py --config configs/seresnet.py --workdir /root/runs/published40 \
      --config.num_epochs=40 --config.name=published40 --config.data_dir=$DATA \
      --config.checkpoint_every_epochs=0 --config.progress_bar=False \
      2>&1 | tee "$OUT/published40.log"
  fi
  echo; echo "== summaries =="; grep -h '^summary:' "$OUT"/*.log
  ;;
esac
echo "part $part took $(( $(date +%s) - start )) s"
