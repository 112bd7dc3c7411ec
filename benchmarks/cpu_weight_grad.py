"""One stage-0 convolution of the published network (3x3, 64 -> 64, 32x32, batch 64, NHWC)
on a CPU: XLA's forward, input gradient and weight gradient, and two other formulations of the
weight gradient (nine shifted dots; im2col and one dot), alternated in one process.

  python benchmarks/cpu_weight_grad.py --repeats 5
"""
import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

N, H, C, K = 64, 32, 64, 64
DN = ('NHWC', 'HWIO', 'NHWC')


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)


def shifted(x):
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + H, j:j + H, :] for i in range(3) for j in range(3)]


def weight_grad_dots(x, dy):
  over_nhw = (((0, 1, 2), (0, 1, 2)), ((), ()))
  return jnp.stack([lax.dot_general(s, dy, over_nhw) for s in shifted(x)]).reshape(3, 3, C, K)


def weight_grad_im2col(x, dy):
  patches = jnp.stack(shifted(x), 3)  # N, H, W, 9, C
  return lax.dot_general(patches, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))).reshape(3, 3, C, K)


def weight_grad_swapped(x, dy):
  """The output gradient as the convolution's input (channels as batch, examples as features)
  and the padded activation as its 34x34 kernel: the big transpose moves from x to dy."""
  xpad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = lax.conv_general_dilated(dy, xpad, (1, 1), ((2, 2), (2, 2)),
                                 dimension_numbers=('CHWN', 'IHWO', 'CHWN'))  # (Ci, 3, 3, Co)
  return out[:, ::-1, ::-1, :].transpose(1, 2, 0, 3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((N, H, H, C)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((N, H, H, K)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, C, K)) * 0.05, jnp.float32)
  fns = {'forward': lambda x, dy, w: conv(x, w),  # arguments, not constants: XLA would fold them
         'grad-input (XLA)': lambda x, dy, w: jax.vjp(lambda v: conv(v, w), x)[1](dy)[0],
         'grad-weight (XLA)': lambda x, dy, w: jax.vjp(lambda v: conv(x, v), w)[1](dy)[0],
         'grad-weight, 9 dots': lambda x, dy, w: weight_grad_dots(x, dy),
         'grad-weight, im2col + dot': lambda x, dy, w: weight_grad_im2col(x, dy),
         'grad-weight, dy as input': lambda x, dy, w: weight_grad_swapped(x, dy)}
  fns = {k: functools.partial(jax.jit(f), x, dy, w) for k, f in fns.items()}
  reference = np.asarray(fns['grad-weight (XLA)']())
  times = {k: [] for k in fns}
  for k, f in fns.items():
    jax.block_until_ready(f())
  for _ in range(args.repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t0)
  for k, f in fns.items():
    error = (np.abs(np.asarray(f()) - reference).max() / np.abs(reference).max()
             if k.startswith('grad-weight') else 0.0)
    print(f'{k:28s} {1e3 * statistics.median(times[k]):8.1f} ms  (vs XLA grad-weight: '
          f'max error {error:.1e} of the largest element)')


if __name__ == '__main__':
  main()
