"""CPU speed of this library against the PyTorch twin, side by side, on whatever CPU runs it.

  python benchmarks/cpu_speed.py                 # batch 32/64/128, 1 and all cores (not yet run)
  python benchmarks/cpu_speed.py --quick         # batch 64, 3 pairs (8.6-12 min, loaded 2 cores)
  python benchmarks/cpu_speed.py --out docs/results/cpu_speed_$(date +%F).md

Cells (published network, float32, same weights through torch_bridge, same images):
  train step   the Trainer's compiled step as training runs it (gather, augmentation, forward,
               backward, clipping, SGD; the state donated) against PyTorch eager doing the same
               (torch_side.torch_augment, forward, backward, clip_grad_value_, SGD);
  fwd+bwd      jax.jit(jax.grad) of the loss with train-mode BatchNorm against eager
               forward + backward;
  inference    forward only, eval mode, uint8 images in: jax.jit, the jax.export artifact
               (what --mode export writes), against eager under torch.inference_mode.
Thread counts: each count runs in a child process pinned with taskset to that many cores (XLA
sizes its thread pool from the affinity) with torch.set_num_threads to the same. The two sides
alternate, A B A B ..., one call (or a window of calls) each; a ratio is the median of the
per-pair ratios, so that a load that comes and goes on a shared machine hits both sides alike.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or 'unknown CPU'


def interleaved(a, b, repeats: int, warmup: int = 1) -> dict:
  """Times a() and b() alternately (each returns once its work is done); medians and the
  median of the per-pair ratios time(b) / time(a) (> 1: a is faster)."""
  for _ in range(warmup):
    a(), b()
  ta, tb = [], []
  for _ in range(repeats):
    for fn, times in ((a, ta), (b, tb)):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
  return {'a_s': statistics.median(ta), 'b_s': statistics.median(tb),
          'ratio': statistics.median(y / x for x, y in zip(ta, tb))}


def jax_trainer(batch: int):
  """The Trainer of the published config on synthetic data, compiled for `batch`."""
  import tempfile
  from configs import seresnet
  from flax_seresnet import train
  config = seresnet.get_config()
  config.update_from_flattened_dict({'batch_size': batch, 'dataset': 'synthetic',
                                     'progress_bar': False, 'num_devices': 1})
  trainer = train.Trainer(config, tempfile.mkdtemp(prefix='cpu_speed_'))
  trainer.compile()
  return trainer


def torch_twin(variables):
  """The twin with `variables`' weights, and an SGD optimizer as published."""
  from benchmarks import torch_side
  from flax_seresnet import reference, torch_bridge
  net = reference.TorchSEResNet()
  net.load_state_dict(torch_bridge.to_torch_state_dict(variables))
  return net, torch_side._sgd(net, torch_side.LEARNING_RATE, torch_side.MOMENTUM,
                              torch_side.WEIGHT_DECAY)


def train_step_pair(batch: int, trainer=None):
  """(jax step, torch step): the full train step, both sides, on the same images."""
  import torch
  import torch.nn.functional as F
  from benchmarks import torch_side
  import jax
  trainer = trainer or jax_trainer(batch)
  indices = trainer.dp.shard(trainer.plan.local(np.arange(batch, dtype=np.int32)))
  net, opt = torch_twin(steps_variables(trainer.state))
  images = torch.from_numpy(np.asarray(trainer.data.train_images[:batch]))
  images = images.permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(np.asarray(trainer.data.train_labels[:batch], np.int64))
  gen = torch.Generator().manual_seed(0)

  def jax_step():
    trainer.train_step(indices)
    jax.block_until_ready(trainer.state)

  def torch_step():
    net.train()
    opt.zero_grad()
    loss = F.cross_entropy(net(torch_side.torch_augment(images, gen)), labels)
    loss.backward()
    torch.nn.utils.clip_grad_value_(net.parameters(), torch_side.CLIP_VALUE)
    opt.step()
  return jax_step, torch_step


def steps_variables(state):
  import jax
  return jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})


def fwd_bwd_pair(batch: int):
  """(jax, torch): gradients of the mean cross-entropy, train-mode BatchNorm, no update."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F
  from flax_seresnet import steps
  from flax_seresnet.model import SEResNet
  model = SEResNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
  y = (np.arange(batch) % 10).astype(np.int32)

  def loss(params, stats, x, y):
    logits, updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                  mutable=['batch_stats'])
    return steps.cross_entropy(logits, y).mean(), updates
  grad = jax.jit(jax.grad(loss, has_aux=True))
  args = (variables['params'], variables['batch_stats'], jnp.asarray(x), jnp.asarray(y))
  net, _ = torch_twin(variables)
  tx, ty = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y.astype(np.int64))

  def torch_fb():
    net.train()
    net.zero_grad()
    F.cross_entropy(net(tx), ty).backward()
  return lambda: jax.block_until_ready(grad(*args)), torch_fb


def inference_pairs(batch: int):
  """{name: (jax, torch)}: forward only on uint8 images, jitted and through the exported
  artifact, each against eager PyTorch on the same weights."""
  import jax
  import jax.numpy as jnp
  import torch
  import input_pipeline
  from flax_seresnet import export, steps
  from flax_seresnet.model import SEResNet
  model = SEResNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  jitted = jax.jit(lambda v, im: steps.predict_logits(model.apply, v, im))
  artifact = jax.export.deserialize(bytearray(export.jax_artifact(model, variables, False)))
  net, _ = torch_twin(variables)
  net.eval()
  mean, std = np.array(input_pipeline.CIFAR10_MEAN), np.array(input_pipeline.CIFAR10_STD)

  def torch_eager():
    with torch.inference_mode():
      x = ((images / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
      return net(torch.from_numpy(x)).numpy()
  return {'inference jit': (lambda: np.asarray(jitted(variables, images)), torch_eager),
          'inference export': (lambda: np.asarray(artifact.call(images)), torch_eager)}


def cells(batches, infer_batches, windows: dict):
  """[(name, batch, jax fn, torch fn, repeats)] for this process's thread count."""
  out = []
  for b in batches:
    out.append(('train step', b) + train_step_pair(b) + (windows['train'],))
    out.append(('fwd+bwd', b) + fwd_bwd_pair(b) + (windows['train'],))
  for b in infer_batches:
    for name, (j, t) in inference_pairs(b).items():
      out.append((name, b, j, t, windows['infer']))
  return out


def child(args):
  """Runs the cells at this process's core count; one JSON line per cell on stdout."""
  import torch
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  for name, batch, jax_fn, torch_fn, repeats in cells(
      args.batches, args.infer_batches, {'train': args.repeats, 'infer': 3 * args.repeats}):
    r = interleaved(jax_fn, torch_fn, repeats)
    print(json.dumps({'cell': name, 'batch': batch, 'cores': cores, 'repeats': repeats,
                      'jax_img_s': batch / r['a_s'], 'torch_img_s': batch / r['b_s'],
                      'ratio': r['ratio']}), flush=True)


def run_children(args) -> list:
  """One child per core count, pinned with taskset; their JSON rows."""
  rows = []
  available = sorted(os.sched_getaffinity(0))
  for count in sorted({len(available), 1}, reverse=True):
    cpus = ','.join(str(c) for c in available[:count])
    cmd = ['taskset', '-c', cpus, sys.executable, os.path.abspath(__file__), '--child',
           '--batches', ','.join(map(str, args.batches)),
           '--infer_batches', ','.join(map(str, args.infer_batches if count > 1 or not
                                              args.quick else [])),
           '--repeats', str(args.repeats)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as child_process:
      for line in child_process.stdout:  # streamed: a cell shows as soon as it is measured
        if line.startswith('{'):
          rows.append(json.loads(line))
          print(line.strip(), flush=True)
    if child_process.returncode:
      raise SystemExit(f'{" ".join(cmd)} failed ({child_process.returncode})')
  return rows


def table(rows, args, seconds: float) -> str:
  load = os.getloadavg()
  lines = [f'# CPU speed, {datetime.date.today()}', '',
           f'Machine: {cpu_name()}, {os.cpu_count()} cores seen, load average '
           f'{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (shared with other jobs).',
           f'Command: `python benchmarks/cpu_speed.py {" ".join(sys.argv[1:])}` '
           f'({seconds / 60:.1f} min). Ratios: JAX / PyTorch eager in images/s, median of the '
           f'per-pair ratios of alternating calls; {args.repeats} pairs per training cell.', '',
           '| cell | batch | cores | JAX img/s | PyTorch img/s | JAX / PyTorch |',
           '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['cell']} | {r['batch']} | {r['cores']} | {r['jax_img_s']:.1f} | "
                 f"{r['torch_img_s']:.1f} | {r['ratio']:.2f}x |")
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ints = lambda s: [int(v) for v in s.split(',') if v]
  parser.add_argument('--batches', type=ints, default=[32, 64, 128])
  parser.add_argument('--infer_batches', type=ints, default=[1, 256])
  parser.add_argument('--repeats', type=int, default=5, help='pairs per training cell')
  parser.add_argument('--quick', action='store_true', help='batch 64, 3 pairs, inference on '
                      'all cores only, batch 256 and 1')
  parser.add_argument('--out', default='', help='also write the markdown table here')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  if args.quick:
    args.batches, args.repeats = [64], 3
  t0 = time.perf_counter()
  text = table(run_children(args), args, time.perf_counter() - t0)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
