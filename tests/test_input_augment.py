"""On-device augmentation: equal to a NumPy reference, well distributed, jit-able, per-example."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import (CIFAR10_MEAN, CIFAR10_STD, augment, example_keys, normalize,
                            random_crop_flip)
from input_pipeline.augment import apply_crop_flip, draw_crop_flip


def _images(count: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def _reference(images, dy, dx, flip, padding, pad_mode):
  """Plain NumPy: pad, crop at (dy, dx), mirror."""
  out = []
  for image, y, x, f in zip(images, dy, dx, flip):
    widths = ((padding, padding), (padding, padding), (0, 0))
    padded = np.pad(image, widths, mode='constant' if pad_mode == 'zeros' else 'reflect')
    crop = padded[y:y + 32, x:x + 32]
    out.append(crop[:, ::-1] if f else crop)
  return np.stack(out)


def _np_normalize(images):
  return ((images.astype(np.float64) / 255 - np.asarray(CIFAR10_MEAN)) /
          np.asarray(CIFAR10_STD)).astype(np.float32)


@pytest.mark.parametrize('pad_mode', ['zeros', 'reflect'])
def test_matches_numpy_for_drawn_parameters(pad_mode):
  images = _images(64)
  keys = example_keys(jax.random.key(0), np.arange(64))
  dy, dx, flip = draw_crop_flip(keys, 4)
  got = random_crop_flip(images, keys, padding=4, pad_mode=pad_mode)
  assert got.dtype == jnp.uint8 and got.shape == images.shape
  np.testing.assert_array_equal(got, _reference(images, np.asarray(dy), np.asarray(dx),
                                                np.asarray(flip), 4, pad_mode))


@pytest.mark.parametrize('pad_mode', ['zeros', 'reflect'])
def test_matches_numpy_at_every_offset(pad_mode):
  """All 81 (dy, dx) pairs, flipped and not, including the corners 0 and 8."""
  dy, dx = (g.ravel() for g in np.meshgrid(np.arange(9), np.arange(9), indexing='ij'))
  dy, dx = np.concatenate([dy, dy]), np.concatenate([dx, dx])
  flip = np.arange(162) >= 81
  images = _images(162, seed=1)
  got = jax.jit(apply_crop_flip, static_argnums=(4, 5))(images, dy, dx, flip, 4, pad_mode)
  np.testing.assert_array_equal(got, _reference(images, dy, dx, flip, 4, pad_mode))


def test_zero_padding_corner_holds_zeros():
  images = np.full((1, 32, 32, 3), 200, np.uint8)
  out = np.asarray(apply_crop_flip(images, np.array([0]), np.array([0]), np.array([False]), 4))
  assert (out[0, :4] == 0).all() and (out[0, :, :4] == 0).all() and (out[0, 4:, 4:] == 200).all()


def test_offsets_and_flips_are_well_distributed():
  n = 4096
  dy, dx, flip = (np.asarray(a) for a in
                  draw_crop_flip(example_keys(jax.random.key(42), np.arange(n)), 4))
  for offsets in (dy, dx):
    counts = np.bincount(offsets, minlength=9)
    assert len(counts) == 9 and (counts > 0).all(), counts  # every offset 0..8, nothing else
    assert (np.abs(counts - n / 9) < 5 * np.sqrt(n / 9)).all(), counts
  assert abs(flip.mean() - 0.5) < 0.04
  # dy, dx and the flip are not tied to each other.
  assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.06
  assert abs(np.corrcoef(dy, flip)[0, 1]) < 0.06


def test_normalize_is_the_whole_eval_transform():
  images = _images(4)
  got = normalize(images)
  assert got.dtype == jnp.float32 and got.shape == images.shape
  np.testing.assert_allclose(got, _np_normalize(images), rtol=1e-5, atol=1e-5)


def test_augment_is_crop_flip_then_normalize():
  images = _images(16)
  keys = example_keys(jax.random.PRNGKey(3), np.arange(16))  # raw keys work too
  got = augment(images, keys, pad_mode='reflect')
  np.testing.assert_allclose(
      got, _np_normalize(np.asarray(random_crop_flip(images, keys, pad_mode='reflect'))),
      rtol=1e-5, atol=1e-5)


def test_works_under_jit():
  images = _images(8)

  @functools.partial(jax.jit, static_argnames=('pad_mode',))
  def step(images, key, ids, pad_mode):
    return augment(images, example_keys(key, ids), pad_mode=pad_mode)

  ids = jnp.arange(8, dtype=jnp.int32)
  for pad_mode in ('zeros', 'reflect'):
    np.testing.assert_allclose(
        step(images, jax.random.key(1), ids, pad_mode),
        augment(images, example_keys(jax.random.key(1), ids), pad_mode=pad_mode), atol=1e-6)


def test_same_example_same_augmentation_in_any_batch():
  """An example's result depends on (key, id) only, not on its batch or position."""
  images = _images(8)
  ids = np.array([5, 17, 3, 49999, 0, 8, 1234, 42], np.int32)
  key = jax.random.key(7)
  batch = np.asarray(augment(images, example_keys(key, ids)))
  for i in range(8):
    alone = augment(images[i:i + 1], example_keys(key, ids[i:i + 1]))
    np.testing.assert_array_equal(np.asarray(alone)[0], batch[i])
  # Split as over two devices, and reordered.
  halves = np.concatenate([augment(images[:4], example_keys(key, ids[:4])),
                           augment(images[4:], example_keys(key, ids[4:]))])
  np.testing.assert_array_equal(halves, batch)
  order = np.arange(8)[::-1]
  np.testing.assert_array_equal(augment(images[order], example_keys(key, ids[order])),
                                batch[order])


def test_different_keys_or_ids_differ():
  ids = np.arange(256)
  a = draw_crop_flip(example_keys(jax.random.key(0), ids))
  b = draw_crop_flip(example_keys(jax.random.key(1), ids))
  assert (np.asarray(a[0]) != np.asarray(b[0])).mean() > 0.5


def test_flip_off_and_padding_zero():
  images = _images(32)
  keys = example_keys(jax.random.key(0), np.arange(32))
  dy, dx, _ = draw_crop_flip(keys, 4)
  no_flip = random_crop_flip(images, keys, flip=False)
  np.testing.assert_array_equal(
      no_flip, _reference(images, np.asarray(dy), np.asarray(dx), np.zeros(32, bool), 4, 'zeros'))
  np.testing.assert_array_equal(random_crop_flip(images, keys, padding=0, flip=False), images)
