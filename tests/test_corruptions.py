"""The CIFAR-10-C corruptions' properties, generated over every name x severity: uint8 in and
out, deterministic for a seed, identity where the definition gives one, damage growing with
severity where the constants make it grow, and the script's truncating save step."""
import numpy as np
import pytest
import scipy.ndimage as ndi

from input_pipeline import CORRUPTIONS, SEVERITIES, corrupt, corruptions

ALL = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
# Those whose definition draws random numbers; the others ignore the seed.
RANDOM = {'gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'glass_blur',
          'motion_blur', 'snow', 'fog', 'spatter', 'elastic_transform'}
# Constants that do not make the damage grow: saturate's factors go 0.3, 0.1, 1.5, 2, 2.5;
# glass blur's sigma drops at severity 4 (0.4 -> 0.25, 2 sweeps); elastic's displacement
# shrinks as its smoothing grows; spatter turns from water (1-3) to mud (4-5).
NOT_GROWING = {'saturate', 'glass_blur', 'elastic_transform', 'spatter'}
# Images a definition leaves as they are: (image, severities, tolerance). Averages and filters
# of a constant give it back in exact arithmetic; in floats the sum may land just below, and
# the truncating save step then stores one less (the published script does the same).
EXACT, ONE_LESS = 0, 1
IDENTITY = {
    'shot_noise': [('black', SEVERITIES, EXACT)],  # Poisson(0) = 0
    'speckle_noise': [('black', SEVERITIES, EXACT)],  # x + x * noise
    'fog': [('black', SEVERITIES, EXACT)],  # scaled by the image's maximum, 0
    'snow': [('white', SEVERITIES, EXACT)],  # only ever brightens
    'brightness': [('white', SEVERITIES, EXACT)],
    'saturate': [('grey', (1, 2, 3), EXACT)],  # saturation 0 times c, plus 0
    'contrast': [('constant', SEVERITIES, ONE_LESS), ('black', SEVERITIES, EXACT)],
    'gaussian_blur': [('constant', SEVERITIES, EXACT)],
    'glass_blur': [('constant', SEVERITIES, EXACT)],
    'motion_blur': [('constant', SEVERITIES, EXACT)],
    'pixelate': [('constant', SEVERITIES, EXACT)],
    'elastic_transform': [('constant', SEVERITIES, EXACT)],
    'defocus_blur': [('constant', SEVERITIES, ONE_LESS)],
    'zoom_blur': [('constant', SEVERITIES, ONE_LESS)],
}
IDENTITY_CASES = [(name, severity, kind, tolerance) for name, cases in IDENTITY.items()
                  for kind, severities, tolerance in cases for severity in severities]


def natural(count: int = 40, seed: int = 0) -> np.ndarray:
  """Smooth colour fields plus mild noise: blur, noise and colour changes all show on them."""
  rng = np.random.default_rng(seed)
  low = ndi.zoom(rng.random((count, 5, 5, 3)), (1, 8, 8, 1), order=1)[:, 4:36, 4:36]
  return np.clip(low * 200 + 20 + rng.normal(0, 8, low.shape), 0, 255).astype(np.uint8)


IMAGES = natural()


def special(kind: str) -> np.ndarray:
  values = np.array([0, 37, 77, 128, 200, 254, 255], np.uint8)
  if kind == 'black':
    return np.zeros((3, 32, 32, 3), np.uint8)
  if kind == 'white':
    return np.full((3, 32, 32, 3), 255, np.uint8)
  if kind == 'constant':  # one value per image and channel
    return np.broadcast_to(np.stack([values, values[::-1], np.roll(values, 3)], -1)[:, None, None],
                           (7, 32, 32, 3)).copy()
  grey = IMAGES.mean(axis=-1, keepdims=True).astype(np.uint8)
  return np.repeat(grey, 3, axis=-1)


@pytest.mark.parametrize('name,severity', ALL)
def test_uint8_shape_and_seed(name, severity):
  out = corrupt(IMAGES, name, severity, seed=3)
  assert out.dtype == np.uint8 and out.shape == IMAGES.shape
  assert np.array_equal(out, corrupt(IMAGES, name, severity, seed=3))
  other = corrupt(IMAGES, name, severity, seed=4)
  assert np.array_equal(out, other) == (name not in RANDOM)
  assert not np.array_equal(out, IMAGES)  # every corruption changes these images


@pytest.mark.parametrize('name', [n for n in CORRUPTIONS if n not in NOT_GROWING])
def test_damage_grows_with_severity(name):
  damage = [np.abs(corrupt(IMAGES, name, s, 0).astype(int) - IMAGES).mean() for s in SEVERITIES]
  assert all(np.diff(damage) > 0), damage


@pytest.mark.parametrize('name,severity,kind,tolerance', IDENTITY_CASES)
def test_identity_where_the_definition_gives_one(name, severity, kind, tolerance):
  images = special(kind)
  lost = images.astype(int) - corrupt(images, name, severity, 0)
  assert lost.min() >= 0 and lost.max() <= tolerance, (lost.min(), lost.max())


@pytest.mark.parametrize('name,severity', [(n, s) for n, s in ALL if n not in (
    'motion_blur', 'pixelate', 'jpeg_compression')])  # uint8 from ImageMagick and Pillow
def test_stored_as_the_script_stores_it_truncated(name, severity):
  function, constant = corruptions._FUNCTIONS[name], corruptions._C[name][severity - 1]
  raw = function(IMAGES, constant, np.random.default_rng(7))
  truncated = np.floor(np.clip(raw, 0, 1) * 255)
  # The stored value is the float's integer part: never rounded up.
  stored = corruptions.store(raw)
  assert np.array_equal(stored, truncated)
  # And corrupt stores exactly that for the same draws.
  rng = np.random.default_rng([5, corruptions.zlib.crc32(name.encode()), severity, 0])
  assert np.array_equal(corrupt(IMAGES, name, severity, 5),
                        corruptions.store(function(IMAGES, constant, rng)))


def test_contrast_by_hand_truncates():
  """Half black, half white: mean 127.5; at 0.75 the values 31.875 and 223.125 are stored as 31
  and 223 (rounding would give 32)."""
  image = np.zeros((1, 32, 32, 3), np.uint8)
  image[:, 16:] = 255
  out = corrupt(image, 'contrast', 1)
  assert set(np.unique(out)) == {31, 223}


def test_glass_blur_copies_from_up_left_as_the_script():
  """At severity 1 the blur (sigma 0.05) leaves the pixels as they are, so each pixel must come
  from itself or its neighbour up, left or up-left; a true swap would also move pixels down and
  right."""
  images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3), np.uint8)
  out = corrupt(images, 'glass_blur', 1, 0)
  padded = np.pad(images, ((0, 0), (1, 0), (1, 0), (0, 0)))
  sources = [padded[:, 1 - dy:33 - dy, 1 - dx:33 - dx] for dy in (0, 1) for dx in (0, 1)]
  assert np.any([np.all(out == s, axis=-1) for s in sources], axis=0).all()
  assert not np.array_equal(out, images)
  assert np.array_equal(out[:, :2], images[:, :2])  # rows 0 and 1 are never targets


def test_one_stream_per_chunk(monkeypatch):
  """Images in separate chunks draw separately: a prefix gives the same result alone."""
  monkeypatch.setattr(corruptions, 'CHUNK', 16)
  whole = corrupt(IMAGES, 'gaussian_noise', 2, 0)
  assert np.array_equal(corrupt(IMAGES[:16], 'gaussian_noise', 2, 0), whole[:16])


@pytest.mark.parametrize('args,needle', [
    ((IMAGES, 'frost', 1), 'frost is not generated'),
    ((IMAGES, 'Fog', 1), "unknown corruption 'Fog'"),
    ((IMAGES, 'fog', 0), 'severity 0'),
    ((IMAGES, 'fog', True), 'severity True'),
    ((IMAGES.astype(np.float32), 'fog', 1), 'float32'),
    ((IMAGES[:, :16], 'fog', 1), '(40, 16, 32, 3)'),
])
def test_refuses_what_it_cannot_corrupt(args, needle):
  with pytest.raises(ValueError) as info:
    corrupt(*args)
  assert needle in str(info.value)


def test_names_in_the_published_order():
  assert CORRUPTIONS[:7] == ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur',
                             'glass_blur', 'motion_blur', 'zoom_blur')
  assert 'frost' not in CORRUPTIONS and len(CORRUPTIONS) == 18
