"""CIFAR-10-C's common corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019), written from the definitions
and the CIFAR severity constants of the paper's generation script (make_cifar_c.py), with numpy,
scipy.ndimage and Pillow only.

  corrupt(images, name, severity, seed)   uint8 NHWC in, uint8 NHWC out, same shape

The names are the official files' names (`<name>.npy`), in the script's order. Frost is left
out: it blends crops of six photographs shipped with the paper's code, which this project does
not have. As in the script, each corruption works on [0, 1] floats and the result is stored
with np.uint8(clip(x, 0, 1) * 255): truncated, not rounded. Motion blur, pixelate and JPEG give
uint8 images directly (ImageMagick and Pillow round).

Where the script calls OpenCV, scikit-image or ImageMagick, the small equivalent here follows
their documented behaviour, not bit for bit (see each function): the random draws differ in any
case (numpy's Generator; one stream per chunk of images), so the images are CIFAR-10-C-like,
not CIFAR-10-C; evaluations on them are labelled 'generated'.
"""
import io
import zlib

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
               'motion_blur', 'zoom_blur', 'snow', 'fog', 'brightness', 'contrast',
               'elastic_transform', 'pixelate', 'jpeg_compression', 'speckle_noise',
               'gaussian_blur', 'spatter', 'saturate')
SEVERITIES = (1, 2, 3, 4, 5)
CHUNK = 1000  # images per random stream: the result does not depend on how memory is used

# The script's CIFAR constants, by severity 1..5.
_C = {
    'gaussian_noise': (0.04, 0.06, .08, .09, .10),
    'shot_noise': (500, 250, 100, 75, 50),
    'impulse_noise': (.01, .02, .03, .05, .07),
    'speckle_noise': (.06, .1, .12, .16, .2),
    'gaussian_blur': (.4, .6, 0.7, .8, 1),
    'glass_blur': ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    'defocus_blur': ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    'motion_blur': ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    'zoom_blur': tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26)),
    'fog': ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    'snow': ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    'spatter': ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    'contrast': (.75, .5, .4, .3, 0.15),
    'brightness': (.05, .1, .15, .2, .3),
    'saturate': ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    'jpeg_compression': (80, 65, 58, 50, 40),
    'pixelate': (0.95, 0.9, 0.85, 0.75, 0.65),
    'elastic_transform': tuple((32 * a, 32 * b, 32 * c) for a, b, c in (
        (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03))),
}


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
  """`images` (uint8, N x 32 x 32 x 3) with corruption `name` at `severity` (1..5): uint8, same
  shape. The same (images, name, severity, seed) always give the same result."""
  images = np.asarray(images)
  if name == 'frost':
    raise ValueError("frost is not generated: it blends crops of the paper's frost photographs, "
                     'which this project does not have; the official frost.npy can be read')
  if name not in _FUNCTIONS:
    raise ValueError(f'unknown corruption {name!r}: one of {", ".join(CORRUPTIONS)}')
  if severity not in SEVERITIES or isinstance(severity, bool):
    raise ValueError(f'severity {severity!r}: one of 1, 2, 3, 4, 5')
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
    raise ValueError(f'images are {images.dtype} {images.shape}: give uint8 (N, 32, 32, 3)')
  out = np.empty_like(images)
  for start in range(0, len(images), CHUNK):
    # One stream per (seed, name, severity, chunk): crc32 keeps it stable across versions.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), severity, start // CHUNK])
    result = _FUNCTIONS[name](images[start:start + CHUNK], _C[name][severity - 1], rng)
    out[start:start + CHUNK] = result if result.dtype == np.uint8 else store(result)
  return out


def store(x: np.ndarray) -> np.ndarray:
  """The script's save step: np.uint8(clip(x, 0, 1) * 255), which truncates."""
  return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _unit(images: np.ndarray, dtype=np.float64) -> np.ndarray:
  return images.astype(dtype) / 255.


def _gaussian(x: np.ndarray, sigma: float, mode: str = 'nearest', truncate: float = 4.0):
  """skimage.filters.gaussian over the two image axes of an (N, H, W[, C]) batch."""
  sigmas = (0, sigma, sigma) + (0,) * (x.ndim - 3)
  return ndi.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


# ----- noise -----

def gaussian_noise(images, c, rng):
  x = _unit(images)
  return x + rng.normal(size=x.shape, scale=c)


def shot_noise(images, c, rng):
  return rng.poisson(_unit(images) * c) / c


def impulse_noise(images, c, rng):
  """skimage's random_noise(mode='s&p') as of 0.14: each value (channels apart), with
  probability c, becomes 0 or 1, each half the time."""
  x = _unit(images)
  flipped = rng.random(x.shape) <= c
  salted = rng.random(x.shape) <= 0.5
  x[flipped & salted] = 1.
  x[flipped & ~salted] = 0.
  return x


def speckle_noise(images, c, rng):
  x = _unit(images)
  return x + x * rng.normal(size=x.shape, scale=c)


# ----- blur -----

def gaussian_blur(images, c, rng):
  return _gaussian(_unit(images), c)


def glass_blur(images, c, rng):
  """Blur, then `iterations` sweeps that give each pixel (rows and columns max_delta + 1..31) the
  value of a neighbour up to max_delta up and left (randint(-d, d) excludes d), then blur again.
  The script writes this as a swap, `x[h, w], x[h', w'] = x[h', w'], x[h, w]`, but both sides are
  numpy views, so it copies x[h', w'] into x[h, w] and leaves x[h', w']: the published images
  are made that way, and so are these. Its sweep runs from the bottom right and each source
  pixel is visited after its target, so one sweep is one gather from the image before it."""
  sigma, delta, iterations = c
  x = store(_gaussian(_unit(images), sigma))
  inner = np.arange(delta + 1, 32)
  n = np.arange(len(x))[:, None, None]
  for _ in range(iterations):
    dy, dx = rng.integers(-delta, delta, size=(2, len(x), len(inner), len(inner)))
    x[:, delta + 1:, delta + 1:] = x[n, inner[:, None] + dy, inner[None, :] + dx]
  return _gaussian(x / 255., sigma)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
  """The script's defocus kernel: a disk on a 17 x 17 grid, normalised, smoothed by a 3 x 3
  Gaussian of sigma alias_blur (OpenCV's GaussianBlur), trimmed to its non-zero part."""
  grid = np.arange(-8, 9)
  disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur ** 2))
  kernel = ndi.correlate(disk, np.outer(taps, taps) / taps.sum() ** 2, mode='mirror')
  rows, cols = np.nonzero(kernel)
  return kernel[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def defocus_blur(images, c, rng):
  """OpenCV's filter2D with BORDER_REFLECT_101 is scipy's correlate with mode='mirror'."""
  kernel = _disk(*c)
  return ndi.correlate(_unit(images), kernel[None, :, :, None], mode='mirror')


def _motion(images: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
  """A line kernel like ImageMagick's -motion-blur radius x sigma + angle (degrees, one per
  image): width 2 * ceil(radius) + 1, weight exp(-i^2 / (2 sigma^2)) on the pixel i steps
  along the angle (offsets rounded to whole pixels, edge pixels repeated), normalised; a
  one-sided trail. Differences: ImageMagick computes at 16 bits (or in HDRI floats) and its
  versions differ; here float64, rounded once to uint8 like its 8-bit PNG output."""
  width = 2 * int(np.ceil(radius)) + 1
  steps = np.arange(width)
  weights = np.exp(-steps ** 2 / (2 * sigma ** 2))
  weights /= weights.sum()
  angles = np.deg2rad(angles)[:, None]
  dx = np.ceil(steps * np.cos(angles) - 0.5).astype(int)  # (N, width)
  dy = np.ceil(steps * np.sin(angles) - 0.5).astype(int)
  base = np.arange(len(images))[:, None, None] * 1024
  rows, cols = np.arange(32)[None, :, None], np.arange(32)[None, None, :]
  pixels = images.reshape(len(images) * 1024, -1)
  out = np.zeros(images.shape, np.float64)
  for i in range(width):
    r = np.clip(rows + dy[:, i, None, None], 0, 31)
    k = np.clip(cols + dx[:, i, None, None], 0, 31)
    out += weights[i] * pixels[base + r * 32 + k].reshape(images.shape)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def motion_blur(images, c, rng):
  return _motion(images, c[0], c[1], rng.uniform(-45, 45, len(images)))


def _zoom_matrix(zoom: float) -> np.ndarray:
  """The script's clipped_zoom along one axis as a 32 x 32 matrix: crop the centre
  ceil(32 / zoom), scipy's zoom (order 1) back up, trim to the centre 32."""
  crop = int(np.ceil(32 / zoom))
  top = (32 - crop) // 2
  zoomed = ndi.zoom(np.eye(crop), (zoom, 1), order=1)
  trim = (zoomed.shape[0] - 32) // 2
  matrix = np.zeros((32, 32))
  matrix[:, top:top + crop] = zoomed[trim:trim + 32]
  return matrix


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
  """clipped_zoom of each (N, 32, 32[, C]) image: bilinear zoom is separable."""
  matrix = _zoom_matrix(zoom)
  return np.einsum('ij,nj...->ni...', matrix, np.einsum('kl,nil...->nik...', matrix, x))


def zoom_blur(images, c, rng):
  """The mean of the image and its zooms by each factor. Every zoom is linear, so the whole
  blur is one 1024 x 1024 matrix on the pixels (float32, as the script)."""
  total = np.eye(1024)
  for zoom in c:
    matrix = _zoom_matrix(zoom)
    total += np.kron(matrix, matrix)
  total = (total / (len(c) + 1)).astype(np.float32)
  x = _unit(images, np.float32)
  pixels = x.transpose(1, 2, 0, 3).reshape(1024, -1)  # one matrix product for the batch
  return (total @ pixels).reshape(32, 32, len(x), 3).transpose(2, 0, 1, 3)


# ----- weather -----

def _plasma(rng, count: int, decay: float, size: int = 32) -> np.ndarray:
  """The script's diamond-square height map (values in [0, 1]) for `count` images at once."""
  grid = np.zeros((count, size, size))
  step, wibble = size, 100.

  def wibbled(total):
    return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)
  while step >= 2:
    half = step // 2
    corners = grid[:, 0::step, 0::step]
    square = corners + np.roll(corners, -1, axis=1)
    square += np.roll(square, -1, axis=2)
    grid[:, half::step, half::step] = wibbled(square)
    centres, corners = grid[:, half::step, half::step], grid[:, 0::step, 0::step]
    grid[:, 0::step, half::step] = wibbled(centres + np.roll(centres, 1, axis=1) +
                                           corners + np.roll(corners, -1, axis=2))
    grid[:, half::step, 0::step] = wibbled(centres + np.roll(centres, 1, axis=2) +
                                           corners + np.roll(corners, -1, axis=1))
    step, wibble = half, wibble / decay
  grid -= grid.min(axis=(1, 2), keepdims=True)
  return grid / grid.max(axis=(1, 2), keepdims=True)


def fog(images, c, rng):
  x = _unit(images)
  top = x.max(axis=(1, 2, 3), keepdims=True)
  x += c[0] * _plasma(rng, len(x), c[1])[..., None]
  return x * top / (top + c[0])


def _gray(x: np.ndarray) -> np.ndarray:
  """OpenCV's RGB2GRAY weights."""
  return x @ np.array([0.299, 0.587, 0.114], x.dtype)


def snow(images, c, rng):
  """Flakes: thresholded zoomed noise, motion-blurred (see _motion) at an angle in
  [-135, -45], added twice (the second turned by 180 degrees) to the image whitened towards
  its grey level."""
  loc, scale, zoom, threshold, radius, sigma, keep = c
  x = _unit(images, np.float32)
  layer = _clipped_zoom(rng.normal(size=(len(x), 32, 32), loc=loc, scale=scale), zoom)
  layer[layer < threshold] = 0
  layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
  layer = _motion(layer[..., None], radius, sigma, rng.uniform(-135, -45, len(x)))
  layer = layer.astype(np.float64) / 255.
  x = keep * x + (1 - keep) * np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
  return x + layer + layer[:, ::-1, ::-1]


def spatter(images, c, rng):
  """Water drops (severities 1-3: pale turquoise, shaded by the distance to the drops' edges)
  or mud (4-5: brown blots)."""
  loc, scale, sigma, threshold, strength, mud = c
  x = _unit(images, np.float32)
  liquid = _gaussian(rng.normal(size=(len(x), 32, 32), loc=loc, scale=scale), sigma)
  liquid[liquid < threshold] = 0
  if mud:
    m = _gaussian((liquid > threshold).astype(np.float32), strength)
    m[m < 0.8] = 0
    colour = np.array([63, 42, 20], np.float32) / 255.
    return x * (1 - m[..., None]) + colour * m[..., None]
  m = liquid * _water_shading(liquid)
  peak = m.max(axis=(1, 2), keepdims=True)
  m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * strength
  return x + m[..., None] * (np.array([175, 238, 238], np.float32) / 255.)


def _water_shading(liquid: np.ndarray) -> np.ndarray:
  """The script's OpenCV chain for the water's look: Canny edges of the liquid layer, the
  distance to them (exact Euclidean here; OpenCV's 5 x 5 mask approximates it) capped at 20,
  a 3 x 3 box blur, histogram equalisation, an emboss kernel saturated to uint8, a box blur.
  The liquid is clipped to [0, 1] before its uint8 copy (the script's cast would wrap above 1,
  which its constants make all but impossible)."""
  edges = _canny((np.clip(liquid, 0, 1) * 255).astype(np.uint8), 50, 150)
  # Distances along the batch axis are scaled out of reach: each image on its own.
  dist = ndi.distance_transform_edt(~edges, sampling=(1e4, 1, 1))
  dist = np.minimum(dist, 20).astype(np.float32)
  dist = ndi.uniform_filter(dist, (1, 3, 3), mode='mirror').astype(np.uint8)
  dist = _equalize(dist)
  emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64)
  dist = np.clip(np.rint(ndi.correlate(dist.astype(np.float64), emboss[None], mode='mirror')),
                 0, 255)
  return ndi.uniform_filter(dist.astype(np.float32), (1, 3, 3), mode='mirror')


def _canny(gray: np.ndarray, low: float, high: float) -> np.ndarray:
  """Canny edges of each uint8 (N, H, W) image, like OpenCV's (3 x 3 Sobel, L1 magnitude,
  non-maximum suppression in 4 directions, hysteresis over 8-neighbours)."""
  g = gray.astype(np.float64)
  gx = ndi.sobel(g, axis=2, mode='nearest')
  gy = ndi.sobel(g, axis=1, mode='nearest')
  mag = np.abs(gx) + np.abs(gy)
  pad = np.pad(mag, ((0, 0), (1, 1), (1, 1)))

  def neighbour(dy, dx):
    return pad[:, 1 + dy:pad.shape[1] - 1 + dy, 1 + dx:pad.shape[2] - 1 + dx]
  ax, ay = np.abs(gx), np.abs(gy)
  horizontal = ay <= ax * np.tan(np.pi / 8)
  vertical = ay > ax * np.tan(3 * np.pi / 8)
  same_sign = gx * gy > 0
  pairs = [(horizontal, (0, -1), (0, 1)), (vertical, (-1, 0), (1, 0)),
           (~horizontal & ~vertical & same_sign, (-1, -1), (1, 1)),
           (~horizontal & ~vertical & ~same_sign, (-1, 1), (1, -1))]
  peak = np.zeros(mag.shape, bool)
  for where, before, after in pairs:
    peak |= where & (mag > neighbour(*before)) & (mag >= neighbour(*after))
  weak = peak & (mag > low)
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True  # 8-neighbours within an image, never across the batch
  labels, count = ndi.label(weak, structure)
  strong = np.zeros(count + 1, bool)
  strong[labels[weak & (mag > high)]] = True
  strong[0] = False
  return strong[labels]


def _equalize(images: np.ndarray) -> np.ndarray:
  """OpenCV's equalizeHist of each uint8 (N, H, W) image."""
  n = len(images)
  counts = np.bincount((images + np.arange(n)[:, None, None] * 256).ravel().astype(np.int64),
                       minlength=256 * n).reshape(n, 256)
  cdf = counts.cumsum(axis=1)
  first = np.take_along_axis(cdf, (counts > 0).argmax(axis=1)[:, None], axis=1)
  total = cdf[:, -1:]
  flat = total == first  # one grey level: OpenCV keeps it
  scale = 255. / np.where(flat, 1, total - first)
  lut = np.clip(np.rint(np.maximum(cdf - first, 0) * scale), 0, 255).astype(np.uint8)
  lut = np.where(flat, np.arange(256, dtype=np.uint8), lut)
  return np.take_along_axis(lut, images.reshape(n, -1).astype(np.int64), axis=1).reshape(
      images.shape)


# ----- digital -----

def contrast(images, c, rng):
  x = _unit(images)
  means = x.mean(axis=(1, 2), keepdims=True)
  return (x - means) * c + means


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
  """skimage.color.rgb2hsv: H, S, V in [0, 1] (H 0 where grey; ties: blue, then green)."""
  v = x.max(axis=-1)
  delta = v - x.min(axis=-1)
  safe = np.where(delta == 0, 1, delta)
  r, g, b = np.moveaxis(x, -1, 0)
  h = np.where(r == v, (g - b) / safe, 0.)
  h = np.where(g == v, 2. + (b - r) / safe, h)
  h = np.where(b == v, 4. + (r - g) / safe, h)
  h = np.where(delta == 0, 0., (h / 6.) % 1.)
  s = np.where(v == 0, 0., delta / np.where(v == 0, 1, v))
  return np.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """skimage.color.hsv2rgb."""
  h, s, v = np.moveaxis(hsv, -1, 0)
  sector = np.floor(h * 6)
  f = h * 6 - sector
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  sector = sector.astype(int) % 6
  choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  return np.stack([np.choose(sector, [rgb[i] for rgb in choices]) for i in range(3)], axis=-1)


def brightness(images, c, rng):
  hsv = rgb_to_hsv(_unit(images))
  hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
  return hsv_to_rgb(hsv)


def saturate(images, c, rng):
  hsv = rgb_to_hsv(_unit(images))
  hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
  return hsv_to_rgb(hsv)


def jpeg_compression(images, c, rng):
  """Pillow's JPEG at quality c (the script's codec; libjpeg versions may differ by a level)."""
  out = np.empty_like(images)
  for i, image in enumerate(images):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, 'JPEG', quality=c)
    out[i] = np.asarray(Image.open(buffer).convert('RGB'))
  return out


def pixelate(images, c, rng):
  """Down to int(32 c) and back up with Pillow's box filter."""
  size = int(32 * c)
  return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BOX)
                              .resize((32, 32), Image.BOX)) for image in images])


def elastic_transform(images, c, rng):
  """A random affine warp (three points moved by up to c[2]; bilinear, mirrored borders: OpenCV's
  warpAffine, which interpolates at 1/32 pixel, here in floats), then a smooth random
  displacement field (uniform noise blurred by c[1], times c[0]) sampled bilinearly with
  scipy's map_coordinates (mode 'reflect', as the script)."""
  alpha, sigma, shift = c
  x = _unit(images, np.float32)
  n = len(x)
  source = np.float32([[26, 26], [26, 6], [6, 6]])  # centre 16 +- 32 // 3, as (x, y)
  target = source + rng.uniform(-shift, shift, size=(n, 3, 2)).astype(np.float32)
  # warpAffine samples the source at the inverse of the map source -> target: solve for it.
  ones = np.ones((n, 3, 1))
  inverse = np.linalg.solve(np.concatenate([target, ones], axis=2),
                            np.broadcast_to(source, (n, 3, 2)))  # (n, 3, 2)
  rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
  points = np.stack([cols, rows, np.ones_like(rows)], axis=-1).reshape(-1, 3)
  src = points @ inverse  # (n, 1024, 2): x, y in the source
  x = _sample(x, src[..., 1].reshape(n, 32, 32), src[..., 0].reshape(n, 32, 32), 'mirror')
  dx = _gaussian(rng.uniform(-1, 1, size=(n, 32, 32)), sigma, 'reflect', 3) * alpha
  dy = _gaussian(rng.uniform(-1, 1, size=(n, 32, 32)), sigma, 'reflect', 3) * alpha
  return _sample(x, rows + dy.astype(np.float32), cols + dx.astype(np.float32), 'reflect')


def _fold(index: np.ndarray, mode: str, size: int = 32) -> np.ndarray:
  """Integer indices folded into 0..size-1 as scipy.ndimage extends an image: 'reflect' repeats
  the edge pixel (d c b a | a b c d | d c b a), 'mirror' does not (OpenCV's BORDER_REFLECT_101)."""
  outside = (index < 0) | (index >= size)
  if outside.any():  # few are: fold only those
    period = 2 * size if mode == 'reflect' else 2 * size - 2
    folded = np.mod(index[outside], period)
    index = index.copy()
    index[outside] = np.where(folded >= size,
                              period - (mode == 'reflect') - folded, folded)
  return index


def _sample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
  """Bilinear samples of each (N, 32, 32, 3) image at (rows, cols) of shape (N, 32, 32), the
  four neighbours folded in by `mode` (scipy's map_coordinates with order=1, for a batch)."""
  top, left = np.floor(rows), np.floor(cols)
  # In float64 like scipy (the weights of a constant then sum to it), stored in x's dtype.
  down, right = (rows - top)[..., None].astype(np.float64), (cols - left)[..., None]
  top, left = top.astype(np.int64), left.astype(np.int64)
  base = np.arange(len(x))[:, None, None] * 1024
  pixels = x.reshape(-1, 3)
  out = np.zeros(x.shape)
  for r, wr in ((_fold(top, mode), 1 - down), (_fold(top + 1, mode), down)):
    for c, wc in ((_fold(left, mode), 1 - right), (_fold(left + 1, mode), right)):
      out += wr * wc * pixels[base + r * 32 + c]
  return out.astype(x.dtype)


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
