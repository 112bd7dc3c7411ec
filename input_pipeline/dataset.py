"""Choosing, finding and loading the dataset a training config asks for."""
import os
import pathlib
from typing import Any

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


def load_dataset(config: Any, splits=('train', 'test')) -> Cifar10:
  """Loads config.dataset ('cifar10', 'tfds' or 'synthetic'), cut to config.*_subset if set;
  a split not in `splits` comes empty (evaluation reads no training images)."""
  if config.dataset == 'synthetic':
    data, source = synthetic_cifar10(), 'random arrays (dataset=synthetic)'
  elif config.dataset == 'tfds':
    data = load_cifar10_tfds(config.tfds_data_dir or None, download=config.download)
    source = f"tensorflow_datasets' cifar10 in {config.tfds_data_dir or 'its default folder'}"
  else:
    folder = cifar10_dir(config)
    data, source = load_cifar10(folder, train='train' in splits), str(folder)
  subsets = {split: getattr(config, f'{split}_subset') for split in ('train', 'test')}
  for split, subset in subsets.items():
    if split in splits and subset > (count := len(getattr(data, f'{split}_labels'))):
      raise DataError(f'config.{split}_subset={subset} but the {split} set has only {count} '
                      'images: use 0 (all) or a smaller number')
  data = Cifar10(*(v[:subsets[k.split('_')[0]] or None] if k.split('_')[0] in splits else v[:0]
                   for k, v in data._asdict().items()))
  logging.info('CIFAR-10 from %s: %s images', source, ' and '.join(
      f'{len(getattr(data, f"{split}_labels"))} {"training" if split == "train" else split}'
      for split in splits))
  return data
