"""Reading CIFAR-10's "python version" (data_batch_1..5 in this order, test_batch, batches.meta)
and sets to predict on. A batch is a dict: `data`, uint8 (N, 3072), each row the 1024 red, then
green, then blue values, row-major; `labels`, N ints in 0..9. Out come NHWC uint8 images and
int32 labels, in the official order."""
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

from input_pipeline.download import ARCHIVE_FOLDER
from input_pipeline.errors import DataError, one_line
from input_pipeline.safe_pickle import safe_load

TRAIN_FILES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_FILE = 'test_batch'
META_FILE = 'batches.meta'
_BATCH = 'CIFAR-10 batch'
# batches.meta's label_names, by label: what a model's outputs mean.
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
               'truck')
_IMAGE = (32, 32, 3)


class Cifar10(NamedTuple):
  """The whole dataset in host memory: uint8 NHWC images, int32 labels in 0..9."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def _error(what: str, path: pathlib.Path, problem: str) -> DataError:
  return DataError(f'{what} {path}: {problem}; replace it with a well-formed file')


def check_folder(folder: str | os.PathLike[str], train: bool = True) -> pathlib.Path:
  """`folder` if it holds data_batch_1..5 (if `train`) and test_batch, by their names (nothing
  is read); DataError naming what is missing otherwise."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError(f'CIFAR-10 folder {folder} '
                    f'{"is a file" if folder.exists() else "does not exist"}: point data_dir at '
                    'the folder holding data_batch_1..5 and test_batch (the python version)')
  names = TRAIN_FILES[:5 * train] + (TEST_FILE,)
  if missing := [name for name in names if not os.path.lexists(folder / name)]:
    inner = folder / ARCHIVE_FOLDER
    raise DataError(f'CIFAR-10 batch {folder / missing[0]} does not exist: ' + (
        f'point data_dir at {inner}, the folder inside it' if inner.is_dir() else
        'point data_dir at the folder holding data_batch_1..5 and test_batch (the python '
        'version)'))
  return folder


def load_cifar10(folder: str | os.PathLike[str], train: bool = True) -> Cifar10:
  """Loads data_batch_1..5 (unless not `train`: then empty) and test_batch from the existing
  `folder`; DataError if unusable."""
  folder = check_folder(folder, train)
  train_images, train_labels = _read_batches([folder / name for name in TRAIN_FILES[:5 * train]])
  return Cifar10(train_images, train_labels, *_read_batches([folder / TEST_FILE]))


def load_unlabeled(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
  """A set to predict on, {'data': uint8 (N, 3072) or (N, 32, 32, 3), 'ids': N unique numbers
  or strings}, as uint8 (N, 32, 32, 3) images and a 1-D array of ids."""
  what, path = 'unlabeled-images pickle', pathlib.Path(path)
  content = _load_dict(path, what, ('data', 'ids'))
  images = _nhwc([_check_images(content['data'], what, path)])
  ids = _vector(content['ids'], 'ids', 'iufSU', len(images), what, path)
  values, counts = np.unique(ids, return_counts=True)
  if (ids != ids).any() or (counts > 1).any():  # ids != ids: NaN
    raise _error(what, path, "'ids' contain NaN" if (ids != ids).any() else
                 f"'ids' repeat {values[counts > 1][0]}; each must be unique")
  return images, ids


def class_names(folder: str | os.PathLike[str]) -> list[str]:
  """The ten class names in `folder`/batches.meta, by label."""
  what, path = 'CIFAR-10 meta file', pathlib.Path(folder) / META_FILE
  names = _load_dict(path, what, ('label_names',))['label_names']
  if not isinstance(names, list) or len(names) != 10 or {type(n) for n in names} - {bytes, str}:
    raise _error(what, path, "'label_names' is not a list of 10 names")
  return [n.decode('latin-1') if isinstance(n, bytes) else n for n in names]


def _load_dict(path: pathlib.Path, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
  """Safely unpickles `path`, checks it is a dict holding `keys`; str keys out."""
  content = safe_load(path, what=what)
  if not isinstance(content, dict):
    raise _error(what, path, f'it holds a {type(content).__name__}, not a dict')
  # Python 2 files read with encoding='bytes' have bytes keys; Python 3 ones str keys.
  content = {k.decode('latin-1') if isinstance(k, bytes) else k: v for k, v in content.items()}
  for key in keys:
    if key not in content:
      raise _error(what, path, f'it has no {key!r} entry (it has {sorted(content)[:8]})')
  return content


def _vector(value: Any, key: str, kinds: str, count: int, what: str,
            path: pathlib.Path) -> np.ndarray:
  """`value` as a 1-D array of `count` items of the dtype kinds `kinds` (or empty)."""
  try:
    array = np.asarray(value)
  except ValueError as e:  # ragged lists
    raise _error(what, path, f'{key!r} cannot be made into an array ({one_line(e)})') from None
  if array.ndim != 1 or not (array.dtype.kind in kinds or array.size == 0):
    raise _error(what, path, f'{key!r} have shape {array.shape} and dtype {array.dtype}; '
                 f'expected a list of {count} {"ints" if kinds == "iu" else "numbers or strings"}')
  if len(array) != count:
    raise _error(what, path, f'it holds {count} images but {len(array)} {key}')
  return array


def _check_images(data: Any, what: str, path: pathlib.Path) -> np.ndarray:
  if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and
          data.shape[1:] in ((3072,), _IMAGE)):
    kind = f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
    raise _error(what, path, f"'data' is {kind}; expected uint8 (N, 3072) in CIFAR's layout or "
                 '(N, 32, 32, 3)')
  return data


def _nhwc(datas: list[np.ndarray]) -> np.ndarray:
  """Concatenates checked `data` arrays into one C-contiguous uint8 NHWC array (one copy)."""
  images = np.empty((sum(map(len, datas)),) + _IMAGE, np.uint8)
  start = 0
  for data in datas:
    out, start = images[start:start + len(data)], start + len(data)
    if data.ndim == 4:
      out[...] = data
      continue
    # A CIFAR row is 3 planes (R, G, B) of 32 x 32 pixels. Copying plane by plane into a channel
    # is ~5x faster than numpy's general transpose(0, 2, 3, 1) copy for uint8.
    for channel in range(3):
      out.reshape(len(out), 1024, 3)[:, :, channel] = data[:, channel * 1024:(channel + 1) * 1024]
  return images


def _read_batches(paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
  """Reads and concatenates batch files: NHWC uint8 images, int32 labels."""
  datas, labels = [], []
  for path in paths:
    content = _load_dict(path, _BATCH, ('data', 'labels'))
    datas.append(_check_images(content['data'], _BATCH, path))
    array = _vector(content['labels'], 'labels', 'iu', len(datas[-1]), _BATCH, path)
    if (bad := array[(array < 0) | (array > 9)]).size:
      raise _error(_BATCH, path, f"'labels' contain {bad[0]}, outside 0..9")
    labels.append(array.astype(np.int32))
  return _nhwc(datas), np.concatenate(labels or [np.zeros(0, np.int32)])
