"""Reading the official CIFAR-10-C folder (Hendrycks & Dietterich, ICLR 2019): `labels.npy` and
one `<corruption>.npy` per corruption, each holding the test set at severities 1..5 in blocks
(officially 50,000 uint8 images 32 x 32 x 3, blocks of 10,000, and 50,000 labels).

The block size is the labels' count / 5, so a smaller folder of the same layout reads the same
way. Each file must be a regular file of at most the size its layout needs (no FIFO, device or
link to one), a .npy numpy reads without pickle, of the expected dtype and shape; anything else
is a DataError naming the file and what to do.
"""
import io
import os
import pathlib
from typing import NamedTuple

import numpy as np

from input_pipeline.corruptions import CORRUPTIONS
from input_pipeline.errors import DataError, one_line
from input_pipeline.files import os_problem, read_file

LABELS_FILE = 'labels.npy'
# The official files, in the paper's order: ours plus frost (made from photographs).
OFFICIAL = CORRUPTIONS[:8] + ('frost',) + CORRUPTIONS[8:]
MAX_LABELS = 50_000
_HEADER = 4096  # a .npy header is 64 to a few hundred bytes
_IMAGE = (32, 32, 3)
_FIX = 'replace it with the official file (CIFAR-10-C from zenodo.org/record/2535967)'


class Cifar10C(NamedTuple):
  """An opened CIFAR-10-C folder: the labels of one severity block (int32) and the corruptions
  whose files are there, in the official order."""
  folder: pathlib.Path
  labels: np.ndarray
  names: tuple[str, ...]


def open_cifar10c(folder: str | os.PathLike[str]) -> Cifar10C:
  """Checks `folder` and its labels.npy; which corruptions it holds (their files are read and
  checked by `load_corruption`)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError(f'CIFAR-10-C folder {folder} '
                    f'{"is not a folder" if os.path.lexists(folder) else "does not exist"}: give '
                    'the folder holding labels.npy and <corruption>.npy')
  path = folder / LABELS_FILE
  labels = _load(path, 'CIFAR-10-C labels', MAX_LABELS * 8)
  if labels.ndim != 1 or labels.dtype.kind not in 'iu' or not 0 < len(labels) <= MAX_LABELS \
      or len(labels) % 5:
    raise DataError(f'CIFAR-10-C labels {path} hold {labels.dtype} {labels.shape}; expected a '
                    f'multiple of 5 (up to {MAX_LABELS}) integer labels: {_FIX}')
  if labels.min() < 0 or labels.max() > 9:
    raise DataError(f'CIFAR-10-C labels {path} contain {labels[(labels < 0) | (labels > 9)][0]}, '
                    f'outside 0..9: {_FIX}')
  blocks = labels.reshape(5, -1)
  if (blocks != blocks[:1]).any():
    raise DataError(f'CIFAR-10-C labels {path}: the 5 severity blocks of {blocks.shape[1]} '
                    f'differ; each must repeat the test labels: {_FIX}')
  names = tuple(name for name in OFFICIAL if os.path.lexists(folder / f'{name}.npy'))
  if not names:
    raise DataError(f'CIFAR-10-C folder {folder} holds no <corruption>.npy (e.g. '
                    f'{OFFICIAL[0]}.npy): give the folder of the official files')
  return Cifar10C(folder, blocks[0].astype(np.int32), names)


def load_corruption(data: Cifar10C, name: str) -> np.ndarray:
  """The images of corruption `name`: uint8 (5, block, 32, 32, 3), severities 1..5."""
  path = data.folder / f'{name}.npy'
  shape = (5 * len(data.labels),) + _IMAGE
  images = _load(path, 'CIFAR-10-C file', int(np.prod(shape)))
  if images.dtype != np.uint8 or images.shape != shape:
    raise DataError(f'CIFAR-10-C file {path} holds {images.dtype} {images.shape}; expected uint8 '
                    f'{shape} (5 severities of the {len(data.labels)} images labels.npy '
                    f'describes): {_FIX}')
  return images.reshape(5, len(data.labels), *_IMAGE)


def _load(path: pathlib.Path, what: str, max_data: int) -> np.ndarray:
  """A .npy file read without pickle, refused if larger than `max_data` bytes plus a header."""
  try:
    size = os.stat(path).st_size
  except OSError as e:
    raise DataError(f'{what} {path} {os_problem(e)}') from None
  if size > max_data + _HEADER:
    raise DataError(f'{what} {path} is {size} bytes, more than the {max_data + _HEADER} its '
                    f'layout needs: {_FIX}')
  data = read_file(path, what, 'array')  # regular files only, bounded
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, EOFError, OSError) as e:
    raise DataError(f'{what} {path} is not a .npy array numpy reads without pickle '
                    f'({one_line(e)}): {_FIX}') from None
