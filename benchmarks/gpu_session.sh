#!/usr/bin/env bash
# The project's GPU measurements (the README's GPU tables), in parts, each one command on the
# GPU machine, run from the repository root. The parts keep their state (the data, the runs,
# the compilation cache) under $ROOT ($HOME/flax-seresnet-gpu by default), so that a later part
# continues where an earlier one stopped, as long as the machine is the same.
#   bash benchmarks/gpu_session.sh prepare     # on the machine that has the data, before the
#                                              # rest: splits CIFAR-10 into .gpu-data/{a,b,c}
#                                              # (two batch files each, under 64 MB a part, for
#                                              # a machine that takes files in small loads), the
#                                              # shifted set into .gpu-data/d, and the two
#                                              # wheels the GPU machine lacks into .whl/
#   bash benchmarks/gpu_session.sh a|b|c|d     # on the GPU machine: puts that part of the data
#                                              # in place (d: the shifted set)
#   bash benchmarks/gpu_session.sh published1  # configs/seresnet.py epochs 1-100
#   bash benchmarks/gpu_session.sh published2  # epochs 101-200, then shifted-set predictions,
#                                              # plain and flip-TTA (needs part d)
#   bash benchmarks/gpu_session.sh fast        # configs/fast.py seed 0 + its shifted predictions
#   bash benchmarks/gpu_session.sh parity      # compare.py 20 epochs x 3 seeds a side
#   bash benchmarks/gpu_session.sh speed       # today's train step beside PyTorch eager fp32
#                                              # b128 and torch.compile bf16 b512 (one run),
#                                              # one- vs two-pass variance, epoch loop vs step
#   bash benchmarks/gpu_session.sh ablate      # one change at a time vs configs/fast.py
# Data for prepare: $CIFAR10_DATA_DIR (the python batches' folder) and $SHIFTED (the shifted
# set's pickle); without them, a checkout's ../shared/data. Logs and CSVs go to $OUT (./gpu_out
# by default): copy them to docs/results/.
# SMALL=1 runs every part at a tiny scale (a CPU check of this script; DATA=folder of batches).
set -euo pipefail  # a part that fails says so in its exit status
part=${1:?part: prepare, a, b, c, d, published1, published2, fast, parity, speed or ablate}
OUT=${OUT:-gpu_out}; ROOT=${ROOT:-$HOME/flax-seresnet-gpu}; DATA=${DATA:-$ROOT/cifar}
[ "$part" = prepare ] || mkdir -p "$OUT" "$DATA" "$ROOT/site" "$ROOT/runs"
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT/site:$PWD
export JAX_COMPILATION_CACHE_DIR=$ROOT/jax_cache   # later parts and seeds reuse compilations
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
if [ "${SMALL:-0}" = 1 ]; then  # a tiny network, few epochs: checks the commands, not results
  tiny=(--config.model.stage_blocks='(1,1,1)' --config.model.widths='(8,16,16)'
        --config.train_subset=0 --config.batch_size=64 --config.eval_batch_size=64)
  EPOCHS=4; HALF=2; FAST_EPOCHS=2; SEEDS=2; CMP_EPOCHS=1; SMALL_FLAG=--small
else
  tiny=(); EPOCHS=200; HALF=100; FAST_EPOCHS=0; SEEDS=3; CMP_EPOCHS=20; SMALL_FLAG=
fi
[ -d ".gpu-data/$part" ] && cp .gpu-data/"$part"/* "$DATA"/
if [ -d .whl ] && [ "$part" != prepare ]; then  # ml_collections and tensorboardX: not on the GPU
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$ROOT/site" .whl/*.whl
fi
start=$(date +%s)
published() {
  $PY main.py --config configs/seresnet.py --workdir "$ROOT/runs/published200" \
    --config.name=published200 --config.data_dir="$DATA" --config.num_epochs=$EPOCHS \
    --config.progress_bar=False "${tiny[@]}" "$@"
}
shifted=$DATA/cifar10_shifted_nolabels.pkl

case $part in
prepare)
  batches=${CIFAR10_DATA_DIR:-../shared/data/cifar-10-batches-py}
  shifted_in=${SHIFTED:-../shared/data/shifted/cifar10_shifted_nolabels.pkl}
  for f in "$batches"/{data_batch_{1,2,3,4,5},test_batch,batches.meta} "$shifted_in"; do
    [ -f "$f" ] || { echo "prepare: $f is missing: set CIFAR10_DATA_DIR (the folder of" \
                       "data_batch_1..5, test_batch) and SHIFTED (the shifted set's pickle)" >&2
                     exit 2; }
  done
  mkdir -p .gpu-data/a .gpu-data/b .gpu-data/c .gpu-data/d .whl
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo /.gpu-data/ >> .git/info/exclude
  cp "$batches"/data_batch_[12] .gpu-data/a/
  cp "$batches"/data_batch_[34] .gpu-data/b/
  cp "$batches"/{data_batch_5,test_batch,batches.meta} .gpu-data/c/
  cp "$shifted_in" .gpu-data/d/
  $PY -m pip download -q --no-deps --only-binary=:all: -d .whl ml_collections tensorboardX
  du -sh .gpu-data/* .whl
  ;;
a|b|c|d)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  ls "$DATA"
  ;;
published1)
  published --config.max_epochs_this_run=$HALF 2>&1 | tee "$OUT/published200.log"
  ;;
published2)
  published 2>&1 | tee -a "$OUT/published200.log"
  for tta in False True; do
    csv=$OUT/published200_shifted$([ $tta = True ] && echo _tta).csv
    published --mode predict --input "$shifted" --output "$csv" --config.eval_flip_tta=$tta \
      2>&1 | tail -3
  done
  ;;
fast)
  fast=(--config configs/fast.py --workdir "$ROOT/runs/fast_seed0" --config.seed=0
        --config.data_dir="$DATA" "${tiny[@]}")
  [ "$FAST_EPOCHS" -gt 0 ] && fast+=(--config.num_epochs=$FAST_EPOCHS --config.warmup_epochs=1)
  $PY main.py "${fast[@]}" 2>&1 | tee "$OUT/fast_seed0.log"
  $PY main.py "${fast[@]}" --mode predict --input "$shifted" --output "$OUT/fast_shifted.csv" \
    2>&1 | tail -3
  ;;
parity)
  $PY benchmarks/compare.py --epochs $CMP_EPOCHS --seeds $SEEDS --data_dir "$DATA" \
    --workdir "$ROOT/runs/compare$CMP_EPOCHS" $SMALL_FLAG 2>&1 | tee "$OUT/compare$CMP_EPOCHS.log"
  cp "$ROOT/runs/compare$CMP_EPOCHS"/compare.{md,json,png} "$OUT/"
  ;;
speed)
  gpu=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | head -n 1 |
        sed 's/NVIDIA //; s/[^A-Za-z0-9]/_/g' | tr A-Z a-z)
  table=$OUT/throughput_$(date +%F)_${gpu:-cpu}.md
  $PY benchmarks/throughput.py --parts=jax,torch --jax_rows=float32:128,bfloat16:128,bfloat16:512 \
    --torch_rows=eager_fp32:128,compile_bf16_channels_last:512 \
    --one_pass_bn_rows=float32:128,bfloat16:512 --augment_overhead_row= \
    --epoch_loop_row=float32:128 --out "$OUT/throughput.json" $SMALL_FLAG 2>&1 |
    tee "$OUT/throughput.log"
  sed -n '/^Train-step throughput/,$p' "$OUT/throughput.log" > "$table"
  cat "$table"
  ;;
ablate)
  # Each change alone against configs/fast.py at its own epochs; about 50 s a run on an H200.
  changes=(label_smoothing=0.0 nesterov=False eval_flip_tta=False warmup_epochs=0.0
           schedule_per_step=False ema_decay=0.999)
  set_args=(--set "data_dir=$DATA")
  [ "${SMALL:-0}" = 1 ] && set_args+=(--set 'model.stage_blocks=(1,1,1)'
    --set 'model.widths=(8,16,16)' --set num_epochs=2 --set warmup_epochs=1.0 --set train_subset=0
    --set batch_size=64)
  $PY benchmarks/ablate.py --base configs/fast.py --out "$ROOT/runs/ablate" "${set_args[@]}" \
    $(printf -- '--change %s ' "${changes[@]}") 2>&1 | tee "$OUT/ablate.log"
  ;;
*)
  echo "unknown part $part" >&2; exit 2 ;;
esac
echo "part $part took $(( $(date +%s) - start )) s"
echo "== summaries =="; grep -h '^summary:' "$OUT"/*.log 2>/dev/null || true
