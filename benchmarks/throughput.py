"""Train-step images/s of this library and of the PyTorch reference, on whatever device is here.

  python benchmarks/throughput.py                      # the full table (GPU: about 2-3 minutes)
  python benchmarks/throughput.py --small              # a quick run on a CPU
  python benchmarks/throughput.py --parts=jax --out results.json

Rows (same architecture, 4,697,742 parameters, synthetic data already on the device):
  jax    the library's jitted train step as training runs it (index gather, on-device
         augmentation, forward, backward, clipping, SGD), float32 and bfloat16, batch 128 and 512;
         also the same step without augmentation (its cost), with the one-pass BatchNorm
         variance (what the two-pass fix costs, --one_pass_bn_rows) and the full epoch loop with
         its progress bar (host overhead), each relative to the bare step;
  torch  the reference: eager float32 as published, bfloat16 autocast + channels_last, and the
         same under torch.compile.
Each figure is the median of timed windows after warm-up; ratios are to the PyTorch published
step measured in the same run. JAX float32 convolutions use TF32 on recent NVIDIA GPUs (XLA's
default precision); PyTorch is measured with TF32 allowed too, so float32 rows compare alike.
"""
import os
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # share the GPU with torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def jax_trainer(dtype: str, batch_size: int, augment: bool = True, dataset: str = 'synthetic',
                data_dir: str = '', small: bool = False, progress_bar: bool = False):
  from configs import seresnet
  from flax_seresnet import train
  config = seresnet.get_config()
  config.model.dtype = dtype
  config.batch_size = batch_size
  config.dataset = dataset
  if data_dir:
    config.data_dir = data_dir
  config.augment = augment
  config.progress_bar = progress_bar
  if small:
    config.model.stage_blocks = (1, 1, 1)
    config.model.widths = (16, 32, 64)
    config.train_subset = 20 * batch_size
  return train.Trainer(config, tempfile.mkdtemp(prefix='throughput_'))  # closed at exit


@contextlib.contextmanager
def one_pass_batch_norm():
  """The model with the BatchNorm variance as E[x^2] - E[x]^2 in one pass (the formula before the
  two-pass fix; unsound when |mean| >> std): to measure what the fix costs. Single device only."""
  from flax_seresnet import model

  class OnePass(model.BatchNorm):

    @nn.compact
    def __call__(self, x, train):
      scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
      bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],), jnp.float32)
      ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (x.shape[-1],), jnp.float32)
      ra_var = self.variable('batch_stats', 'var', jnp.ones, (x.shape[-1],), jnp.float32)
      x32 = x.astype(jnp.float32)
      mean, var = ra_mean.value, ra_var.value
      if train:
        mean, mean_sq = jnp.mean(x32, (0, 1, 2)), jnp.mean(jnp.square(x32), (0, 1, 2))
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        if not self.is_initializing():
          n = x32.size // x.shape[-1]
          ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
          ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * n / (n - 1)
      return ((x32 - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(self.dtype)

  saved, model.BatchNorm = model.BatchNorm, OnePass
  try:
    yield
  finally:
    model.BatchNorm = saved


def jax_step_throughput(trainer, warmup: int, steps: int, repeats: int) -> dict:
  """Median images/s of the compiled train step, called back to back on one batch."""
  trainer.compile()
  batch = trainer.config.batch_size
  indices = trainer.dp.shard(trainer.plan.local(np.arange(batch, dtype=np.int32)))
  for _ in range(warmup):
    trainer.train_step(indices)
  jax.block_until_ready(trainer.state)
  windows = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      trainer.train_step(indices)
    jax.block_until_ready(trainer.state)
    windows.append(time.perf_counter() - t0)
  return {'img_per_s': batch * steps / statistics.median(windows),
          'compile_s': trainer.position.compile_s}


def jax_epoch_throughput(trainer) -> float:
  """Images/s of Trainer.train_epoch (batch planning, index transfer, progress bar, the stop
  check) after a warm-up epoch, excluding evaluation."""
  trainer.compile()
  trainer.train_epoch(0)
  t0 = time.perf_counter()
  trainer.train_epoch(1)
  return trainer.plan.images_in_steps(0, trainer.plan.steps_per_epoch) / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--parts', default='jax,torch')
  parser.add_argument('--jax_rows', default='float32:128,bfloat16:128,float32:512,bfloat16:512')
  parser.add_argument('--torch_rows', default=(
      'eager_fp32:128,bf16_channels_last:128,bf16_channels_last:512,'
      'compile_bf16_channels_last:512'))
  parser.add_argument('--augment_overhead_row', default='bfloat16:512',
                      help='dtype:batch whose step is also timed without augmentation')
  parser.add_argument('--epoch_loop_row', default='float32:128',
                      help='dtype:batch whose full epoch loop is timed against its bare step')
  parser.add_argument('--one_pass_bn_rows', default='',
                      help='dtype:batch,... also timed with the one-pass BatchNorm variance')
  parser.add_argument('--dataset', default='synthetic', help="'synthetic' or 'cifar10'")
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--warmup', type=int, default=10)
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--small', action='store_true', help='tiny network and few steps (CPU)')
  parser.add_argument('--out', default='', help='also write the rows as JSON here')
  args = parser.parse_args()
  if args.small:
    args.warmup, args.steps, args.repeats = 1, 3, 1
    args.jax_rows, args.torch_rows = 'float32:32,bfloat16:32', 'eager_fp32:32,bf16_channels_last:32'
    args.augment_overhead_row, args.epoch_loop_row = 'float32:32', 'float32:32'
    args.one_pass_bn_rows = args.one_pass_bn_rows and 'float32:32'
  parts = set(args.parts.split(','))
  device = jax.devices()[0].device_kind
  rows = []

  def row(framework, variant, batch, img_s, note=''):
    rows.append({'framework': framework, 'variant': variant, 'batch': batch,
                 'img_per_s': img_s, 'note': note})
    print(f'{framework:6s} {variant:32s} {batch:5d} {img_s:10.0f} img/s {note}', flush=True)

  if 'jax' in parts:
    for spec in args.jax_rows.split(','):
      dtype, batch = spec.split(':')
      trainer = jax_trainer(dtype, int(batch), dataset=args.dataset, data_dir=args.data_dir,
                            small=args.small)
      result = jax_step_throughput(trainer, args.warmup, args.steps, args.repeats)
      row('jax', f'jit {dtype}', int(batch), result['img_per_s'],
          f"compile {result['compile_s']:.1f}s")
      if spec == args.augment_overhead_row:
        bare = jax_trainer(dtype, int(batch), augment=False, dataset=args.dataset,
                           data_dir=args.data_dir, small=args.small)
        plain = jax_step_throughput(bare, args.warmup, args.steps, args.repeats)
        overhead = plain['img_per_s'] / result['img_per_s'] - 1
        row('jax', f'jit {dtype} no augmentation', int(batch), plain['img_per_s'],
            f'augmentation adds {100 * overhead:.1f}% to the step time')
      if spec in args.one_pass_bn_rows.split(','):
        with one_pass_batch_norm():
          old = jax_step_throughput(jax_trainer(dtype, int(batch), dataset=args.dataset,
                                                data_dir=args.data_dir, small=args.small),
                                    args.warmup, args.steps, args.repeats)
        row('jax', f'jit {dtype}, one-pass BN variance', int(batch), old['img_per_s'],
            f"the two-pass variance costs {100 * (old['img_per_s'] / result['img_per_s'] - 1):.1f}%"
            ' of the step time')
      if spec == args.epoch_loop_row:
        looped = jax_trainer(dtype, int(batch), dataset=args.dataset, data_dir=args.data_dir,
                             small=args.small, progress_bar=True)
        loop_img_s = jax_epoch_throughput(looped)
        row('jax', f'epoch loop {dtype} (+progress bar)', int(batch), loop_img_s,
            f"{100 * loop_img_s / result['img_per_s']:.1f}% of the bare step")
      del result

  if 'torch' in parts:
    import torch
    from benchmarks import torch_side
    torch_device = 'cuda' if torch.cuda.is_available() else 'cpu'
    kwargs = {'model_kwargs': dict(stage_blocks=(1, 1, 1), widths=(16, 32, 64))} if (
        args.small) else {}
    for spec in args.torch_rows.split(','):
      mode, batch = spec.split(':')
      warmup = max(args.warmup, 15) if mode.startswith('compile') else args.warmup
      t0 = time.perf_counter()
      img_s = torch_side.torch_train_step_throughput(
          int(batch), mode, torch_device, warmup=warmup, steps=args.steps,
          repeats=args.repeats, allow_tf32=True, **kwargs)
      row('torch', mode, int(batch), img_s, f'{time.perf_counter() - t0:.0f}s in all')

  reference = next((r['img_per_s'] for r in rows
                    if r['framework'] == 'torch' and r['variant'] == 'eager_fp32'), None)
  network = ('small network, few steps: these ratios check the script; they measure neither '
             'framework' if args.small else 'published network')
  print(f'\nTrain-step throughput on {device} ({network})')
  print("| framework | variant | batch | img/s | vs PyTorch published | note |")
  print('|---|---|---|---|---|---|')
  for r in rows:
    ratio = f"{r['img_per_s'] / reference:.2f}x" if reference else '-'
    print(f"| {r['framework']} | {r['variant']} | {r['batch']} | {r['img_per_s']:,.0f} | "
          f"{ratio} | {r['note']} |")
  if args.out:
    with open(args.out, 'w') as f:
      json.dump({'device': device, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
