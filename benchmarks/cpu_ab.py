"""One change to the model against the model without it, side by side in one process: the
jitted forward + backward (train-mode BatchNorm) at one batch size, A B A B ... medians.

  python benchmarks/cpu_ab.py --change stored_conv_inputs --batch 64 --repeats 5

A change is a patch of the model code applied while the second program is traced; both programs
are compiled first, then alternated. Also checks that the two gradients agree to float32 rounding.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import contextlib  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import cpu_speed  # noqa: E402
from flax_seresnet import model as model_lib  # noqa: E402
from flax_seresnet import steps  # noqa: E402



@contextlib.contextmanager
def stored_conv_inputs():
  """An optimization_barrier on every convolution's input, meant to stop XLA recomputing the
  BatchNorm/ReLU/residual chain inside the transposes of the backward pass."""
  saved = model_lib.conv

  def conv(*args, **kwargs):
    layer = saved(*args, **kwargs)
    return lambda x: layer(jax.lax.optimization_barrier(x))
  model_lib.conv = conv
  try:
    yield
  finally:
    model_lib.conv = saved


CHANGES = {'stored_conv_inputs': stored_conv_inputs}


def compiled_grad(batch: int):
  """(compiled gradient function, its arguments) of the current model code."""
  model = model_lib.SEResNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.arange(batch) % 10, jnp.int32)

  def loss(params, stats):
    logits, updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                  mutable=['batch_stats'])
    return steps.cross_entropy(logits, y).mean(), updates
  args = (variables['params'], variables['batch_stats'])
  return jax.jit(jax.grad(loss, has_aux=True)).lower(*args).compile(), args


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--change', choices=sorted(CHANGES), default='stored_conv_inputs')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  without, a_args = compiled_grad(args.batch)
  with CHANGES[args.change]():
    with_change, b_args = compiled_grad(args.batch)
  ga, gb = without(*a_args)[0], with_change(*b_args)[0]
  worst = max(float(jnp.max(jnp.abs(p - q)) / (jnp.max(jnp.abs(p)) + 1e-30))
              for p, q in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)))
  r = cpu_speed.interleaved(lambda: jax.block_until_ready(without(*a_args)),
                            lambda: jax.block_until_ready(with_change(*b_args)), args.repeats)
  print(f'{args.change}, batch {args.batch}, {len(os.sched_getaffinity(0))} cores: without '
        f'{args.batch / r["a_s"]:.1f} img/s, with {args.batch / r["b_s"]:.1f} img/s, '
        f'step time with / without {r["ratio"]:.3f} (median of {args.repeats} pairs); '
        f'largest gradient difference {worst:.2e} of the largest element')


if __name__ == '__main__':
  main()
