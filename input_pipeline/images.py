"""Ordinary image files to predict on: PNG, JPEG, BMP, WebP, GIF or TIFF (read by Pillow, which
goes by the content, not the name), a folder of them (searched recursively, in sorted order) or
a list file (.txt: one path a line, relative to it).

Each image is turned upright by its EXIF orientation (a phone stores a photo sideways and says
so there), then becomes 8-bit RGB by the value range of its mode, never by clipping:
  1, L, P, RGB, CMYK, YCbCr, LAB, HSV   Pillow's conversion (the same 0..255 range);
  I;16, I;16B, I;16L, I;16N             16-bit samples: 0..65535 scaled by 1/257, rounded;
  I                                     32-bit, but Pillow's mode for 16-bit samples (a TIFF, an
                                        old PNG reader): read as 16-bit (0..65535), the rest
                                        clipped, since the int32 range would make every real
                                        image black;
  F                                     floats in 0..1 (numpy's, TIFF's convention) scaled by
                                        255, rounded; outside 0..1 clipped, NaN as 0.
Transparency (an alpha channel, a transparent palette entry or tRNS colour) is composited onto
white (BACKGROUND), as a page shows it: a cut-out object keeps a plain, light background
instead of whatever colour its invisible pixels hold (often black).
Then 32x32: a 32x32 image is used as it is; any other is cut to its central square and resized
with Lanczos filtering (ImageOps.fit), which keeps the aspect of the object and, unlike nearest
or bilinear sampling, averages a large photo down instead of aliasing it. Only the first frame
of an animated GIF or multi-page TIFF is used. A file that cannot be used (truncated, not an
image, a decompression bomb by Pillow's pixel limit, over LIMITS['image'], unreadable) is
reported and skipped; when none is usable, DataError.
"""
import io
import os
import pathlib
import warnings

import numpy as np

from input_pipeline.errors import DataError, one_line
from input_pipeline.files import read_file

SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.gif', '.tif', '.tiff')
# The first bytes of each format read here: an --input is images when it starts so.
MAGIC = (b'\x89PNG\r\n\x1a\n', b'\xff\xd8\xff', b'GIF87a', b'GIF89a', b'BM', b'II*\x00',
         b'MM\x00*')
PICKLE_SUFFIXES = ('.pkl', '.pickle')
SIZE = (32, 32)
BACKGROUND = (255, 255, 255)


def is_image(head: bytes) -> bool:
  """Whether `head`, a file's first bytes, starts one of the formats read here."""
  return head.startswith(MAGIC) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP')


def input_kind(path: str | os.PathLike[str]) -> str:
  """'images' (a folder, a .txt list, an image by content or name) or 'pickle' (one by content,
  or named .pkl/.pickle) for an --input; DataError in one line for anything else."""
  path = pathlib.Path(path)
  if path.is_dir() or path.suffix.lower() == '.txt':
    return 'images'
  head = read_file(path, '--input', 'image', head=16)
  if is_image(head):
    return 'images'
  if head.startswith(b'\x80') or path.suffix.lower() in PICKLE_SUFFIXES:  # protocols 2 to 5
    return 'pickle'
  if path.suffix.lower() in SUFFIXES:
    return 'images'  # damaged, or a format Pillow still knows: read_image says which
  raise DataError(f'--input {path} is neither an image (PNG, JPEG, BMP, WebP, GIF, TIFF) nor a '
                  'pickle {data, ids}: give one of those, a folder of images or a .txt list')


def image_paths(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """The image files `path` names: itself, the files of a folder, or those of a list file."""
  path = pathlib.Path(path)
  if path.is_dir():
    return sorted(p for p in path.rglob('*') if p.suffix.lower() in SUFFIXES and not p.is_dir())
  if path.suffix.lower() == '.txt':
    lines = read_file(path, 'list of images', 'list').decode('utf-8', 'replace').splitlines()
    return [path.parent / line.strip() for line in lines if line.strip()]
  return [path]


def input_files(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """Every file an --input names (itself, a list file and its images, a folder's images): the
  files a run must never write over."""
  path = pathlib.Path(path)
  files = image_paths(path) if path.is_dir() or path.suffix.lower() == '.txt' else []
  return [path, *files]


def _by_range(image):
  """An I;16*, I or F image as 8-bit L, scaled by its value range (see the module's doc)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  values = np.asarray(image).astype(np.float32)  # exact for 16-bit samples
  if image.mode == 'F':
    values = np.nan_to_num(values, nan=0.0) * 255
  else:
    values = values / 257
  return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), 'L')


def _alpha_mask(image):
  """The alpha of `image` as an L image when it has transparency, else None."""
  if image.mode.startswith('I') or image.mode == 'F':
    if 'transparency' not in image.info:  # 16-bit tRNS: one transparent sample value
      return None
    from PIL import Image  # pylint: disable=import-outside-toplevel
    opaque = np.asarray(image) != image.info['transparency']
    return Image.fromarray(np.where(opaque, 255, 0).astype(np.uint8), 'L')
  if image.has_transparency_data:  # an alpha band, tRNS, or a palette with alpha
    return image.convert('RGBA').getchannel('A')
  return None


def to_rgb(image):
  """`image` (any mode Pillow opens) upright, as 8-bit RGB, transparency on BACKGROUND."""
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright image
  alpha = _alpha_mask(image)
  if image.mode.startswith('I') or image.mode == 'F':
    image = _by_range(image)
  rgb = (image.convert('RGBA') if alpha is not None and image.mode != 'L' else image
         ).convert('RGB')
  if alpha is None:
    return rgb
  return Image.composite(rgb, Image.new('RGB', rgb.size, BACKGROUND), alpha)


def read_image(path: pathlib.Path) -> np.ndarray:
  """One image file as uint8 (32, 32, 3); DataError naming the file and the problem."""
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  data = read_file(path, 'image', 'image')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)  # refused, not warned
      with Image.open(io.BytesIO(data)) as image:
        image.load()
        image = to_rgb(image)
    if image.size != SIZE:
      image = ImageOps.fit(image, SIZE, method=Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise DataError(f'image {path} is refused: {one_line(e)}') from None
  except Image.UnidentifiedImageError:  # its message names the in-memory copy, not the file
    raise DataError(f'image {path} is not an image Pillow can read (PNG, JPEG, BMP, WebP, GIF, '
                    'TIFF)') from None
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types
    raise DataError(f'image {path} cannot be read ({type(e).__name__}: {one_line(e)})') from None


def load_images(path: str | os.PathLike[str], report=print):
  """(uint8 (N, 32, 32, 3) images, their paths) of the usable files `path` names; `report`
  gets one line for each file skipped."""
  try:
    import PIL  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise DataError("predicting on image files needs Pillow: pip install pillow") from None
  images, kept = [], []
  for file in image_paths(path):
    try:
      images.append(read_image(file))
      kept.append(file)
    except DataError as e:
      report(f'skipped: {e}')
  if not images:
    raise DataError(f'--input {path} holds no usable image (PNG, JPEG, BMP, WebP, GIF or TIFF; '
                    'a folder of them or a .txt list): give other files')
  return np.stack(images), kept
