"""Choosing, finding and loading the dataset a training config asks for."""
import os
import pathlib
from typing import Any, NamedTuple

from absl import logging
import numpy as np

from input_pipeline.errors import DataError
from input_pipeline.cifar10 import Cifar10, check_folder, load_cifar10
from input_pipeline.download import ARCHIVE_FOLDER, OFFICIAL_URL, download_cifar10
from input_pipeline.tfds_source import load_cifar10_tfds

ENV_VAR = 'CIFAR10_DATA_DIR'


def synthetic_cifar10(num_train: int = 50000, num_test: int = 10000, seed: int = 0) -> Cifar10:
  """Random images and labels of CIFAR-10's shapes: for speed benchmarks, never for accuracy."""
  rng = np.random.default_rng(seed)
  return Cifar10(*(array for n in (num_train, num_test) for array in (
      rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n, np.int32))))


def _where(config: Any):
  """(the python batches' folder, the setting that named it: None for the user cache)."""
  if config.data_dir:
    folder, setting = config.data_dir, 'config.data_dir'
  elif os.environ.get(ENV_VAR):
    folder, setting = os.environ[ENV_VAR], f'${ENV_VAR}'
  else:
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    folder, setting = os.path.join(cache, 'flax-seresnet', ARCHIVE_FOLDER), None
  return pathlib.Path(folder).expanduser(), setting


def check_cifar10_folder(config: Any, train: bool = True) -> str:
  """What `cifar10_dir` would use, checked by file names only, without reading or downloading
  anything (main.py --dry_run)."""
  folder, setting = _where(config)
  if setting is None and not os.path.lexists(folder):
    return f'{folder} (to be downloaded there)'
  if setting and not os.path.lexists(folder) and config.download:
    return f'{folder} (to be downloaded there: config.download=True)'
  return str(check_folder(folder, train))


def cifar10_dir(config: Any) -> pathlib.Path:
  """The python batches' folder: config.data_dir, else $CIFAR10_DATA_DIR, else the user cache.

  Downloads into a missing cache folder, and into a missing given one if config.download.
  """
  folder, setting = _where(config)
  try:
    if folder.is_dir():
      return folder
    exists = folder.exists()
  except OSError as e:  # e.g. a name too long for the file system
    raise DataError(f'{setting or "the cache folder"}={folder} cannot be used ({e.strerror}): '
                    f'point {setting or "config.data_dir"} at the folder of data_batch_1..5, '
                    'test_batch') from None
  if exists:
    raise DataError(f'{setting or "the cache folder"}={folder} is a file: point '
                    f'{setting or "config.data_dir"} at the folder of data_batch_1..5, test_batch')
  if setting and not config.download:
    raise DataError(f'{setting}={folder} does not exist: put the python-version batches '
                    f'(data_batch_1..5, test_batch from {OFFICIAL_URL}) there, or set '
                    'config.download=True to download them into it')
  try:
    return download_cifar10(folder)
  except DataError as e:
    raise DataError(f'{e}; or point config.data_dir or ${ENV_VAR} at such a folder') from None


VALIDATION_STREAM = 0x76616C  # keys the hold-out's generator apart from the epochs' orders


class Splits(NamedTuple):
  """`data` (its training arrays: the images trained on) and the held-out validation set;
  `train_rows` and `validation_rows` index the training set as read."""
  data: Cifar10
  validation_images: np.ndarray
  validation_labels: np.ndarray
  train_rows: np.ndarray
  validation_rows: np.ndarray


def validation_rows(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """`size` // 10 rows of each class, drawn from `seed` alone (the same on every resume and in
  every process), sorted."""
  rng = np.random.default_rng([seed, VALIDATION_STREAM])
  per_class, rows = size // 10, []
  for label in range(10):
    members = np.flatnonzero(labels == label)
    if per_class >= len(members):
      raise DataError(f'config.validation_size={size} holds out {per_class} images of class '
                      f'{label}, which has {len(members)} training images: none would be left '
                      'to train on; use a smaller validation_size')
    rows.append(rng.permutation(members)[:per_class])
  return np.sort(np.concatenate(rows)).astype(np.int32)


def split_training(labels: np.ndarray, validation_size: int, seed: int, subset: int):
  """(rows trained on, validation rows) of a training set: the validation rows are held out
  first, then `subset` (0: all) takes the first of the rows that remain."""
  held = (validation_rows(labels, validation_size, seed) if validation_size
          else np.zeros(0, np.int32))
  rest = np.setdiff1d(np.arange(len(labels), dtype=np.int32), held)
  if subset > len(rest):
    raise DataError(f'config.train_subset={subset} but the train set has only {len(rest)} '
                    f'images{" after the validation set" if validation_size else ""}: use 0 '
                    '(all) or a smaller number')
  return rest[:subset or None], held


def load_dataset(config: Any, splits=('train', 'test')) -> Cifar10:
  """Loads config.dataset ('cifar10', 'tfds' or 'synthetic'); its training arrays are the images
  trained on (without config.validation_size's, then cut to config.train_subset), its test
  arrays cut to config.test_subset; a split not in `splits` comes empty (evaluation reads no
  training images)."""
  return load_splits(config, splits).data


def load_splits(config: Any, splits=('train', 'test')) -> Splits:
  """`load_dataset`'s data with the validation set held out of it (empty when
  config.validation_size is 0 or 'train' is not in `splits`)."""
  data, source = _read(config, splits)
  if config.test_subset > (count := len(data.test_labels)) and 'test' in splits:
    raise DataError(f'config.test_subset={config.test_subset} but the test set has only {count} '
                    'images: use 0 (all) or a smaller number')
  test = slice(config.test_subset or None) if 'test' in splits else slice(0)
  rows, held = np.zeros(0, np.int32), np.zeros(0, np.int32)
  if 'train' in splits:
    # .get: a partial config (a script's, from before the setting) holds out nothing.
    rows, held = split_training(data.train_labels, config.get('validation_size', 0),
                                config.get('seed', 0), config.train_subset)
  # Without a validation set the first rows are a slice: no copy of the training images.
  train = (slice(len(rows)) if not len(held) else rows) if 'train' in splits else slice(0)
  out = Splits(Cifar10(data.train_images[train], data.train_labels[train],
                       data.test_images[test], data.test_labels[test]),
               data.train_images[held], data.train_labels[held], rows, held)
  logging.info('CIFAR-10 from %s: %s images%s', source, ' and '.join(
      f'{len(getattr(out.data, f"{split}_labels"))} {"training" if split == "train" else split}'
      for split in splits), f', {len(held)} held out for validation' if len(held) else '')
  return out


def _read(config: Any, splits):
  """(the whole dataset config.dataset names, where it came from)."""
  if config.dataset == 'synthetic':
    return synthetic_cifar10(), 'random arrays (dataset=synthetic)'
  if config.dataset == 'tfds':
    data = load_cifar10_tfds(config.tfds_data_dir or None, download=config.download)
    return data, (f"tensorflow_datasets' cifar10 in "
                  f"{config.tfds_data_dir or 'its default folder'}")
  folder = cifar10_dir(config)
  return load_cifar10(folder, train='train' in splits), str(folder)
