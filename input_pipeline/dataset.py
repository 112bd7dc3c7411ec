"""Choosing and loading the dataset a training config asks for."""
from typing import Any

import numpy as np

from input_pipeline.cifar10 import Cifar10, load_cifar10
from flax_seresnet.errors import DataError
from input_pipeline.tfds_source import load_cifar10_tfds

DATASETS = ('cifar10', 'tfds', 'synthetic')


def synthetic_cifar10(num_train: int = 50000, num_test: int = 10000, seed: int = 0) -> Cifar10:
  """Random images and labels of CIFAR-10's shapes: for speed benchmarks, never for accuracy."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = lambda n: rng.integers(0, 10, (n,), dtype=np.int32)
  return Cifar10(images(num_train), labels(num_train), images(num_test), labels(num_test))


def load_dataset(config: Any) -> Cifar10:
  """Loads the dataset named by a training config.

  Args:
    config: an ml_collections.ConfigDict (or anything with these attributes):
      dataset: 'cifar10' (the pickled python batches in `data_dir`), 'synthetic'
        (random arrays of CIFAR-10's shapes, for speed benchmarks) or 'tfds'
        (tensorflow_datasets; `tfds_data_dir` if the config has it, else tfds'
        default folder; `data_dir` is the pickles' folder and is not used).
      data_dir: the folder of data_batch_1..5 and test_batch, relative to the
        working directory or absolute.
      download: fetch the official tarball when `data_dir` is missing.
      train_subset: 0 for the whole training set, else its first N images.
      test_subset: likewise for the test set (tests and quick checks only).

  Returns:
    The `Cifar10` arrays, the training set cut to `train_subset`.

  Raises:
    DataError: an unknown dataset name, a bad train_subset, or any loading
      problem.
  """
  name = config.dataset
  download = bool(config.download)
  if name == 'cifar10':
    data = load_cifar10(config.data_dir, download=download)
  elif name == 'tfds':
    tfds_dir = config.get('tfds_data_dir', None) if hasattr(config, 'get') else None
    data = load_cifar10_tfds(tfds_dir or None, download=download)
  elif name == 'synthetic':
    data = synthetic_cifar10()
  else:
    raise DataError(f'config.dataset is {name!r}; use one of {DATASETS}')
  for split in ('train', 'test'):
    key = f'{split}_subset'
    subset = config.get(key, 0) if hasattr(config, 'get') else getattr(config, key, 0)
    images = getattr(data, f'{split}_images')
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 0:
      raise DataError(f'config.{key} is {subset!r}; use 0 (all) or a positive number of images')
    if subset:
      if subset > len(images):
        raise DataError(f'config.{key} is {subset} but the {split} set has only '
                        f'{len(images)} images; use 0 (all) or a smaller number')
      data = data._replace(**{f'{split}_images': images[:subset],
                              f'{split}_labels': getattr(data, f'{split}_labels')[:subset]})
  return data
