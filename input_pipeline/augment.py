"""On-device augmentation and normalisation: pure functions, used inside the jitted step.

The published recipe: pad each 32x32 image by 4 pixels (zeros), take a random 32x32 crop, mirror
it left-right with probability 0.5, then normalise. Images stay uint8 until `normalize`.
Randomness is per example: `example_keys` folds each example's dataset index into the step's key,
so an example's crop and flip depend only on (key, index), never on how the batch is split.
"""
import jax
import jax.numpy as jnp

# The published code's transforms.Normalize values. The std is not the dataset's pixel std
# (0.2470, 0.2435, 0.2616) but what that code used; kept so results stay comparable.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
PAD_MODES = ('zeros', 'reflect')  # 'zeros' as the published code, 'reflect' as the paper's text


def normalize(images):
  """uint8 NHWC images (0..255) -> (x / 255 - mean) / std: the whole evaluation transform."""
  scale = 1.0 / (255.0 * jnp.asarray(CIFAR10_STD, jnp.float32))
  offset = -jnp.asarray(CIFAR10_MEAN, jnp.float32) / jnp.asarray(CIFAR10_STD, jnp.float32)
  return jnp.asarray(images).astype(jnp.float32) * scale + offset


def example_keys(key, example_ids):
  """One PRNG key per example: fold_in(key, id) for each dataset index."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(example_ids, jnp.int32))


def draw_crop_flip(keys, padding: int = 4):
  """Each example's crop offsets (dy, dx in 0..2*padding) and flip, from its own key."""
  def one(key):
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1, dtype=jnp.int32)
    return offsets[0], offsets[1], jax.random.bernoulli(flip_key, 0.5)
  return jax.vmap(one)(keys)


def apply_crop_flip(images, dy, dx, flip, padding: int = 4, pad_mode: str = 'zeros'):
  """Pads, crops each image at (dy, dx) and mirrors it where `flip`; the dtype is kept.

  'reflect' mirrors without repeating the edge pixel, as torchvision's padding_mode='reflect'.
  """
  images = jnp.asarray(images)
  _, height, width, channels = images.shape
  widths = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(images, widths, mode='constant' if pad_mode == 'zeros' else 'reflect')
  crop = lambda image, y, x: jax.lax.dynamic_slice(image, (y, x, 0), (height, width, channels))
  crops = jax.vmap(crop)(padded, jnp.asarray(dy, jnp.int32), jnp.asarray(dx, jnp.int32))
  # A select, not a per-example branch: one fused, branch-free kernel.
  return jnp.where(jnp.asarray(flip)[:, None, None, None], crops[:, :, ::-1, :], crops)


def random_crop_flip(images, keys, *, padding: int = 4, pad_mode: str = 'zeros',
                     flip: bool = True):
  """The training-time geometry. The flip is drawn even when off, so the crops do not change."""
  dy, dx, flips = draw_crop_flip(keys, padding)
  return apply_crop_flip(images, dy, dx, flips & flip, padding, pad_mode)


def augment(images, keys, *, padding: int = 4, pad_mode: str = 'zeros', flip: bool = True):
  """`random_crop_flip` then `normalize`: uint8 batch in, normalised float32 out."""
  return normalize(random_crop_flip(images, keys, padding=padding, pad_mode=pad_mode, flip=flip))
