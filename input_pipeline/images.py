"""Ordinary image files to predict on: PNG, JPEG, BMP or WebP (read by Pillow), a folder of them
(searched recursively, in sorted order) or a list file (.txt: one path a line, relative to it).

Each image becomes RGB (grayscale expanded, an alpha channel dropped, palettes resolved) and
32x32: a 32x32 image is used as it is; any other is cut to its central square and resized with
Lanczos filtering (ImageOps.fit), which keeps the aspect of the object and, unlike nearest or
bilinear sampling, averages a large photo down instead of aliasing it. A file that cannot be
used (truncated, not an image, a decompression bomb by Pillow's pixel limit, over LIMITS['image'],
unreadable) is reported and skipped; when none is usable, DataError.
"""
import io
import os
import pathlib
import warnings

import numpy as np

from input_pipeline.errors import DataError, one_line
from input_pipeline.files import read_file

SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
SIZE = (32, 32)


def image_paths(path: str | os.PathLike[str]) -> list[pathlib.Path]:
  """The image files `path` names: itself, the files of a folder, or those of a list file."""
  path = pathlib.Path(path)
  if path.is_dir():
    return sorted(p for p in path.rglob('*') if p.suffix.lower() in SUFFIXES and not p.is_dir())
  if path.suffix.lower() == '.txt':
    lines = read_file(path, 'list of images', 'list').decode('utf-8', 'replace').splitlines()
    return [path.parent / line.strip() for line in lines if line.strip()]
  return [path]


def read_image(path: pathlib.Path) -> np.ndarray:
  """One image file as uint8 (32, 32, 3); DataError naming the file and the problem."""
  from PIL import Image, ImageOps  # pylint: disable=import-outside-toplevel
  data = read_file(path, 'image', 'image')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)  # refused, not warned
      with Image.open(io.BytesIO(data)) as image:
        image.load()
        image = image.convert('RGB')
    if image.size != SIZE:
      image = ImageOps.fit(image, SIZE, method=Image.Resampling.LANCZOS)
    return np.asarray(image, np.uint8)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise DataError(f'image {path} is refused: {one_line(e)}') from None
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
    raise DataError(f'--input {path} holds no usable image (PNG, JPEG, BMP or WebP; a folder '
                    'of them or a .txt list): give other files')
  return np.stack(images), kept
