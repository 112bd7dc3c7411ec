"""On-device augmentation and normalization, pure functions usable inside jax.jit.

The published recipe: pad each 32x32 image by 4 pixels (zeros), take a random
32x32 crop, mirror it left-right with probability 0.5, then normalize with the
per-channel mean and std below. Images stay uint8 until `normalize`, so the
host ships 4x fewer bytes to the device than with float32.

Randomness is per example: `example_keys` folds each example's dataset index
into the step's key, so an example's crop and flip depend only on (key, index),
never on the batch size or on how a batch is split over devices or processes.
"""
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp

from flax_seresnet.errors import DataError

# The values of the published PyTorch code (transforms.Normalize). The std is
# not the dataset's pixel std (0.2470, 0.2435, 0.2616) but what that code used;
# keep it so results are comparable.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

PAD_MODES = ('zeros', 'reflect')


def normalize(images: jax.Array,
              mean: Sequence[float] = CIFAR10_MEAN,
              std: Sequence[float] = CIFAR10_STD,
              dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """Maps uint8 NHWC images (0..255) to ((x / 255 - mean) / std) in `dtype`.

  This is the whole evaluation-time transform; training uses `augment`.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  # One fused multiply-add per value: x * (1 / (255 std)) - mean / std.
  scale = 1.0 / (255.0 * std)
  offset = -mean / std
  return (jnp.asarray(images).astype(jnp.float32) * scale + offset).astype(dtype)


def example_keys(key: jax.Array, example_ids: jax.Array) -> jax.Array:
  """One PRNG key per example: `fold_in(key, id)` for each (int32) id.

  Args:
    key: the step's key, raw (`jax.random.PRNGKey`) or typed
      (`jax.random.key`). Derive it from the epoch (e.g.
      `fold_in(base_key, epoch)`), or every epoch repeats the same crops.
    example_ids: int (B,) indices of the examples in the dataset.

  Returns:
    B keys of the same kind as `key`.
  """
  ids = jnp.asarray(example_ids).astype(jnp.int32)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def draw_crop_flip(keys: jax.Array, padding: int = 4) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Draws each example's crop offsets and flip from its own key.

  Args:
    keys: (B,) keys, one per example (see `example_keys`).
    padding: pixels of padding on each side; offsets are uniform in
      0..2 * padding.

  Returns:
    (dy, dx, flip): int32 (B,) row and column offsets into the padded image
    and bool (B,) whether to mirror left-right (probability 0.5).
  """
  padding = _check_padding(padding)

  def one(key):
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1, dtype=jnp.int32)
    return offsets[0], offsets[1], jax.random.bernoulli(flip_key, 0.5)

  return jax.vmap(one)(keys)


def apply_crop_flip(images: jax.Array,
                    dy: jax.Array,
                    dx: jax.Array,
                    flip: jax.Array,
                    padding: int = 4,
                    pad_mode: str = 'zeros') -> jax.Array:
  """Pads, crops at (dy, dx) and optionally mirrors each image; dtype kept.

  Args:
    images: (B, H, W, C) NHWC images, usually uint8.
    dy, dx: int (B,) offsets of each crop in the padded image, in
      0..2 * padding.
    flip: bool (B,) whether to mirror each crop left-right.
    padding: pixels added on each side before cropping.
    pad_mode: 'zeros' (the published code) or 'reflect' (mirror without
      repeating the edge pixel, like torchvision's padding_mode='reflect').

  Returns:
    (B, H, W, C) images of the input's dtype.
  """
  padding = _check_padding(padding)
  if pad_mode not in PAD_MODES:
    raise DataError(f'pad_mode (config.pad_mode) is {pad_mode!r}; use one of {PAD_MODES}')
  images = jnp.asarray(images)
  _, height, width, channels = images.shape
  if padding:
    widths = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    # Pad the whole batch once; one batched gather then takes every crop.
    padded = jnp.pad(images, widths, mode='constant' if pad_mode == 'zeros' else 'reflect')
  else:
    padded = images

  def crop(image, y, x):
    return jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels))

  crops = jax.vmap(crop)(padded, jnp.asarray(dy, jnp.int32), jnp.asarray(dx, jnp.int32))
  # A select rather than a per-example branch: both sides are cheap and it
  # keeps the computation one fused, branch-free kernel.
  return jnp.where(jnp.asarray(flip)[:, None, None, None], crops[:, :, ::-1, :], crops)


def random_crop_flip(images: jax.Array,
                     keys: jax.Array,
                     *,
                     padding: int = 4,
                     pad_mode: str = 'zeros',
                     flip: bool = True) -> jax.Array:
  """The training-time geometric augmentation: random crop, random mirror.

  Args:
    images: (B, 32, 32, 3) uint8 NHWC images.
    keys: (B,) per-example keys from `example_keys`.
    padding: pixels of padding per side; crops are offset by 0..2 * padding.
    pad_mode: 'zeros' or 'reflect'.
    flip: whether to mirror with probability 0.5. The flip is drawn either
      way, so turning it off does not change the crops.

  Returns:
    (B, 32, 32, 3) images of the input's dtype.
  """
  dy, dx, flips = draw_crop_flip(keys, padding)
  if not flip:
    flips = jnp.zeros_like(flips)
  return apply_crop_flip(images, dy, dx, flips, padding, pad_mode)


def augment(images: jax.Array,
            keys: jax.Array,
            *,
            padding: int = 4,
            pad_mode: str = 'zeros',
            flip: bool = True,
            dtype: jnp.dtype = jnp.float32) -> jax.Array:
  """`random_crop_flip` then `normalize`: uint8 batch in, normalized `dtype` out."""
  return normalize(random_crop_flip(images, keys, padding=padding, pad_mode=pad_mode, flip=flip),
                   dtype=dtype)


def _check_padding(padding: int) -> int:
  """Returns `padding` as a Python int (numpy ints from configs included) or raises."""
  if not isinstance(padding, numbers.Integral) or isinstance(padding, bool) or padding < 0:
    raise DataError(f'crop padding (config.crop_padding) is {padding!r}; use an int >= 0')
  return int(padding)
