"""Where a CPU train step goes, op by op: the JAX step (XLA's thunks, from a jax.profiler trace,
named by the optimised HLO) and the PyTorch twin's eager step (torch.profiler), same batch.

  python benchmarks/cpu_profile.py --batch 64 --steps 2

Each XLA thunk (a fusion, a convolution, a copy) is put in one class from what its fused
computation holds: a convolution (forward, gradient of the input, gradient of the weight: the
last is the one whose window is the feature map), a transpose or layout copy, a reduction, or
elementwise work; SE when every op in it comes from an SE block. Times are summed over XLA's
worker threads (busy time, ms per step), next to the wall time of the step.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

COMPUTATION = re.compile(r'^%?(\S+) \(.*\) -> .* \{$')
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?(\S+) = (\S+) (\S+?)\(')


def computations(hlo: str) -> dict:
  """{computation name: its instruction lines}; the entry computation under 'ENTRY'."""
  out, name = {}, None
  for line in hlo.splitlines():
    if line.startswith('ENTRY'):
      name = 'ENTRY'
    elif (m := COMPUTATION.match(line)):
      name = m.group(1)
    elif line.startswith('}'):
      name = None
    elif name:
      out.setdefault(name, []).append(line)
  return out


def conv_class(line: str, entry: str) -> str:
  """Forward, grad-input or grad-weight: the last has the feature map as its window (> 3)."""
  window = re.search(r'window=\{size=(\d+)x', line)
  if window and int(window.group(1)) > 3:
    return 'conv grad-weight'
  return 'conv grad-input' if 'transpose(jvp' in line + entry else 'conv forward'


def body_class(lines, entry: str) -> str:
  """The class of the work in a fusion's computation (`entry`: its line in ENTRY)."""
  text = '\n'.join(lines)
  ops = re.findall(r'op_name="([^"]*)"', text + entry)
  if ops and all('seblock' in o or '/se/' in o for o in ops):
    return 'SE block'
  conv = [l for l in lines if ' convolution(' in l]
  if conv:
    return conv_class(conv[0], entry)
  if ' dot(' in text:
    return 'matmul (classifier)'
  if ' transpose(' in text or ' copy(' in text:
    return 'transpose/copy (+ fused elementwise)'
  if ' reduce(' in text or ' reduce-window(' in text:
    return 'reduction (BN statistics, grads of BN/bias)'
  return 'elementwise (BN apply, ReLU, SGD, ...)'


def thunk_classes(hlo: str) -> dict:
  """{entry instruction name: class} from the optimised HLO text."""
  comps = computations(hlo)
  classes = {}
  for line in comps.get('ENTRY', []):
    m = INSTRUCTION.match(line)
    if not m:
      continue
    name, op = m.group(1), m.group(3)
    called = re.search(r'calls=%?([\w.\-]+)', line)
    body = comps.get(called.group(1), []) if called else [line]
    classes[name] = body_class(body, line) if op in ('fusion', 'convolution', 'dot', 'copy',
                                                     'transpose', 'reduce') else op
  return classes


def trace_times(trace_dir: str, classes: dict, steps: int) -> dict:
  """{class: busy ms per step} of the thunks in the trace under `trace_dir`."""
  path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  totals, per_op = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e['name'] in classes:
      totals[classes[e['name']]] += e['dur'] / 1e3 / steps
      per_op[e['name']] += e['dur'] / 1e3 / steps
  return totals, per_op


def jax_profile(compiled, args, steps: int):
  """(wall ms per step, {class: busy ms}, top thunks) of `compiled(*args)` under a trace;
  `args` is a function returning the arguments of the next call (state donated)."""
  classes = thunk_classes(compiled.as_text())
  out = compiled(*args())
  jax.block_until_ready(out)
  trace_dir = tempfile.mkdtemp(prefix='cpu_profile_')
  jax.profiler.start_trace(trace_dir)
  t0 = time.perf_counter()
  for _ in range(steps):
    jax.block_until_ready(compiled(*args()))
  wall = (time.perf_counter() - t0) * 1e3 / steps
  jax.profiler.stop_trace()
  totals, per_op = trace_times(trace_dir, classes, steps)
  top = [(name, classes[name], ms) for name, ms in per_op.most_common(12)]
  return wall, totals, top


TORCH_CLASSES = (('convolution_backward', 'conv backward (grad-input + grad-weight)'),
                 ('conv', 'conv forward'), ('batch_norm', 'BatchNorm (fwd + bwd)'),
                 ('sgd', 'optimizer'), ('_foreach', 'optimizer/clip (foreach)'),
                 ('clamp', 'optimizer/clip (foreach)'),
                 ('threshold', 'ReLU (fwd + bwd)'), ('relu', 'ReLU (fwd + bwd)'))


def torch_class(name: str) -> str:
  low = name.lower()
  return next((c for key, c in TORCH_CLASSES if key in low), 'other: ' + name)


def torch_profile(step, steps: int):
  """(wall ms per step, {class: self CPU ms per step}) of the eager twin's `step()`; an op's
  time is measured on the thread that calls it, so parallel regions count once."""
  import torch
  step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(steps):
      step()
    wall = (time.perf_counter() - t0) * 1e3 / steps
  totals = collections.Counter()
  for e in prof.key_averages():
    totals[torch_class(e.key)] += e.self_cpu_time_total / 1e3 / steps
  return wall, totals


def train_step_call(trainer, batch):
  """(compiled step, args()) of the Trainer's step; the donated state is threaded through."""
  indices = trainer.dp.shard(trainer.plan.local(np.arange(batch, dtype=np.int32)))
  compiled = trainer._compiled[batch]

  def args():
    return (trainer.state, trainer.train_data, indices, trainer.key_data, trainer._stop_flags[0])

  def call(*a):
    trainer.state, metrics = compiled(*a)
    return metrics
  call.as_text = compiled.as_text
  return call, args


def report(jax_result, torch_result, batch) -> str:
  wall, totals, top = jax_result
  twall, ttotals = torch_result
  lines = [f'JAX train step (Trainer, batch {batch}): {wall:.0f} ms wall per step; '
           f'{sum(totals.values()):.0f} ms busy on XLA\'s threads', '',
           '| class | ms per step (busy) | share |', '|---|---|---|']
  busy = sum(totals.values())
  lines += [f'| {k} | {v:.0f} | {100 * v / busy:.0f}% |' for k, v in totals.most_common()]
  lines += ['', '| top thunks | class | ms |', '|---|---|---|']
  lines += [f'| {n} | {c} | {ms:.0f} |' for n, c, ms in top]
  lines += ['', f'PyTorch eager twin step (batch {batch}): {twall:.0f} ms wall per step; '
            f'self CPU time by class (each op timed on the calling thread, its OpenMP region '
            'included: wall time, not busy time)', '',
            '| class | ms per step | share |', '|---|---|---|']
  tbusy = sum(ttotals.values())
  lines += [f'| {k} | {v:.0f} | {100 * v / tbusy:.0f}% |' for k, v in ttotals.most_common(12)]
  return '\n'.join(lines) + '\n'


def main():
  from benchmarks import cpu_speed
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--hlo_out', default='', help='also write the optimised HLO here')
  args = parser.parse_args()
  trainer = cpu_speed.jax_trainer(args.batch)
  call, call_args = train_step_call(trainer, args.batch)
  if args.hlo_out:
    with open(args.hlo_out, 'w') as f:
      f.write(call.as_text())
  jax_result = jax_profile(call, call_args, args.steps)
  torch_step = cpu_speed.train_step_pair(args.batch, trainer)[1]
  print(report(jax_result, torch_profile(torch_step, args.steps), args.batch))


if __name__ == '__main__':
  main()
