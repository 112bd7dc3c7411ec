"""Reading CIFAR-10 from its original "python version" pickled batches.

The folder holds data_batch_1..5 (the training set, in this order), test_batch
and batches.meta. Each batch is a dict whose `data` is a uint8 (N, 3072) array
(per image the 1024 red, then green, then blue values, row-major) and whose
`labels` is a list of N ints in 0..9. Everything is returned as NHWC uint8
images and int32 labels, in the official order.
"""
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

from input_pipeline import download as download_lib
from input_pipeline.download import OFFICIAL_MD5, OFFICIAL_URL
from flax_seresnet.errors import DataError, one_line
from input_pipeline.safe_pickle import safe_load

TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_FILE = 'test_batch'
META_FILE = 'batches.meta'
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
_FLAT_SIZE = 32 * 32 * 3


class Cifar10(NamedTuple):
  """The whole dataset in host memory.

  Attributes:
    train_images: uint8 (50000, 32, 32, 3), NHWC.
    train_labels: int32 (50000,), in 0..9.
    test_images: uint8 (10000, 32, 32, 3), NHWC.
    test_labels: int32 (10000,), in 0..9.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def load_cifar10(data_dir: str | os.PathLike[str],
                 *,
                 download: bool = False,
                 url: str = OFFICIAL_URL,
                 md5: str = OFFICIAL_MD5) -> Cifar10:
  """Loads the CIFAR-10 train and test sets from the folder `data_dir`.

  Args:
    data_dir: the folder holding data_batch_1..5 and test_batch.
    download: when `data_dir` does not exist, download and extract the
      tarball from `url` into it (checked against `md5`) instead of failing.
    url: the tarball to download.
    md5: its expected MD5.

  Returns:
    A `Cifar10` with NHWC uint8 images and int32 labels, official order.

  Raises:
    DataError: the folder or a file is missing, a file is not a safe and
      well-formed CIFAR-10 batch, or the download failed.
  """
  folder = pathlib.Path(data_dir)
  if not folder.exists():
    if not download:
      raise DataError(
          f'CIFAR-10 folder {folder} does not exist: put the python-version batches '
          f'(data_batch_1..5, test_batch) there, point data_dir at them, or set download=True '
          f'(config.download) to fetch {url}')
    download_lib.download_cifar10(folder, url, md5)
  elif not folder.is_dir():
    raise DataError(f'CIFAR-10 data_dir {folder} is a file, not a folder: point data_dir at the '
                    'folder holding data_batch_1..5 and test_batch')
  for name in TRAIN_FILES + (TEST_FILE,):
    if not (folder / name).is_file():
      raise DataError(
          f'CIFAR-10 file {folder / name} is missing: the folder must hold data_batch_1..5 and '
          f'test_batch from {url}; restore the file, or delete the folder and rerun with '
          'download=True')
  train_images, train_labels = _read_batches([folder / name for name in TRAIN_FILES])
  test_images, test_labels = _read_batches([folder / TEST_FILE])
  return Cifar10(train_images, train_labels, test_images, test_labels)


def load_unlabeled(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
  """Loads a pickle of unlabeled images, e.g. a set to predict on.

  The file holds a dict with `data`, a uint8 array of shape (N, 3072) in
  CIFAR's layout or (N, 32, 32, 3) already NHWC, and `ids`, N identifiers
  (bytes or str keys). It is read with the same restricted unpickler.

  Args:
    path: the pickle file.

  Returns:
    (images, ids): uint8 (N, 32, 32, 3) NHWC images and the ids as a 1-D
    array, in file order.

  Raises:
    DataError: the file is missing, unsafe or malformed.
  """
  path = pathlib.Path(path)
  content = _load_dict(path, 'unlabeled-images pickle', ('data', 'ids'))
  images = _to_nhwc(content['data'], path)
  ids = content['ids']
  try:
    ids = np.asarray(ids)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'the ids in {path} cannot be made into an array ({one_line(e)}): store '
                    'them as a 1-D array or list') from None
  if ids.ndim != 1 or ids.dtype == object:
    raise DataError(f'the ids in {path} have shape {ids.shape} and dtype {ids.dtype}; expected a '
                    '1-D array of numbers or strings: fix the file')
  if len(ids) != len(images):
    raise DataError(f'{path} holds {len(images)} images but {len(ids)} ids: every image needs '
                    'exactly one id; fix the file')
  return images, ids


def class_names(data_dir: str | os.PathLike[str]) -> list[str]:
  """Returns the ten class names from `data_dir`/batches.meta, by label."""
  path = pathlib.Path(data_dir) / META_FILE
  names = _load_dict(path, 'CIFAR-10 meta file', ('label_names',))['label_names']
  if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
    raise DataError(f'label_names in {path} is not a list of {NUM_CLASSES} names: replace the file '
                    'with the official batches.meta')
  return [n.decode('latin-1') if isinstance(n, bytes) else str(n) for n in names]


def _load_dict(path: pathlib.Path, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
  """Safely unpickles `path`, checks it is a dict holding `keys`; str keys out."""
  content = safe_load(path, what=what)
  if not isinstance(content, dict):
    raise DataError(f'{what} {path} holds a {type(content).__name__}, not a dict: replace it with '
                    'a well-formed file')
  # Python 2 pickles read with encoding='bytes' have bytes keys; files written
  # by Python 3 have str keys. Accept both.
  content = {k.decode('latin-1') if isinstance(k, bytes) else k: v for k, v in content.items()}
  for key in keys:
    if key not in content:
      raise DataError(f'{what} {path} has no {key!r} entry (it has {sorted(map(str, content))}): '
                      'replace it with a well-formed file')
  return content


def _check_data(data: Any, path: pathlib.Path) -> np.ndarray:
  """Checks a batch's `data`: uint8, (N, 3072) in CIFAR's layout or (N, 32, 32, 3)."""
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
    kind = f'dtype {data.dtype}' if isinstance(data, np.ndarray) else f'type {type(data).__name__}'
    raise DataError(f"'data' in {path} has {kind}; expected a uint8 numpy array: replace the file "
                    'with a well-formed one')
  if not ((data.ndim == 2 and data.shape[1] == _FLAT_SIZE) or
          (data.ndim == 4 and data.shape[1:] == IMAGE_SHAPE)):
    raise DataError(f"'data' in {path} has shape {data.shape}; expected (N, 3072) in CIFAR's "
                    'layout or (N, 32, 32, 3): replace the file with a well-formed one')
  return data


def _copy_nhwc(data: np.ndarray, out: np.ndarray) -> None:
  """Writes checked `data` into `out`, a C-contiguous uint8 (N, 32, 32, 3) array."""
  if data.ndim == 4:
    out[...] = data
    return
  # CIFAR's row is 3 planes (R, G, B) of 32 x 32 pixels. Copying plane by
  # plane into a channel of `out` is ~5x faster than numpy's general
  # transpose(0, 2, 3, 1) copy for uint8.
  pixels = out.reshape(len(out), 32 * 32, 3)
  for channel in range(3):
    pixels[:, :, channel] = data[:, channel * 1024:(channel + 1) * 1024]


def _to_nhwc(data: Any, path: pathlib.Path) -> np.ndarray:
  """Checks a batch's `data` and returns it as a C-contiguous uint8 NHWC array."""
  data = _check_data(data, path)
  images = np.empty((len(data),) + IMAGE_SHAPE, np.uint8)
  _copy_nhwc(data, images)
  return images


def _to_labels(labels: Any, count: int, path: pathlib.Path) -> np.ndarray:
  """Checks a batch's `labels` (a list or array of N ints in 0..9) -> int32."""
  try:
    array = np.asarray(labels)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"'labels' in {path} cannot be made into an array ({one_line(e)}): replace "
                    'the file with a well-formed one') from None
  if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
    raise DataError(f"'labels' in {path} has shape {array.shape} and dtype {array.dtype}; expected "
                    'a list of ints: replace the file with a well-formed one')
  if len(array) != count:
    raise DataError(f'{path} holds {count} images but {len(array)} labels: replace the file with '
                    'a well-formed one')
  if array.size and (array.min() < 0 or array.max() >= NUM_CLASSES):
    bad = array[(array < 0) | (array >= NUM_CLASSES)][0]
    raise DataError(f"'labels' in {path} contain {bad}, outside 0..{NUM_CLASSES - 1}: replace the "
                    'file with a well-formed one')
  return array.astype(np.int32)


def _read_batches(paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
  """Reads and concatenates CIFAR-10 batch files; images NHWC uint8, labels int32."""
  datas, labels = [], []
  for path in paths:
    content = _load_dict(path, 'CIFAR-10 batch', ('data', 'labels'))
    data = _check_data(content['data'], path)
    labels.append(_to_labels(content['labels'], len(data), path))
    datas.append(data)
  # Reorder each batch straight into the final array: one copy of the
  # pixels instead of reorder-then-concatenate, which matters at 150 MB.
  images = np.empty((sum(len(d) for d in datas),) + IMAGE_SHAPE, np.uint8)
  start = 0
  for data in datas:
    _copy_nhwc(data, images[start:start + len(data)])
    start += len(data)
  return images, np.concatenate(labels)
