"""CIFAR-10 from tensorflow_datasets' 'cifar10' (optional): read without TensorFlow."""
import os
import textwrap

import numpy as np

from input_pipeline.errors import DataError
from input_pipeline.cifar10 import Cifar10


def load_cifar10_tfds(data_dir: str | os.PathLike[str] | None = None, *,
                      download: bool = False) -> Cifar10:
  """Loads tfds' 'cifar10' (array_record files) from `data_dir`, in the python batches' order.

  `data_dir` None is tfds' default; `download` lets tfds download and prepare it (with TensorFlow).
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("config.dataset='tfds' needs tensorflow_datasets: run "
                    "pip install 'flax-seresnet[tfds]', or use dataset='cifar10'") from None
  try:
    # array_record files are read with numpy and PIL only, without TensorFlow.
    sources = tfds.data_source('cifar10', split=['train', 'test'], data_dir=data_dir,
                               download=download, builder_kwargs={'file_format': 'array_record'})
    return Cifar10(*(array for source in sources for array in _official_order(source)))
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises many types (DatasetNotFoundError, AssertionError, ...) with long messages.
    raise DataError(
        f"tensorflow_datasets could not load 'cifar10' from {data_dir or 'its default folder'} "
        f'({type(e).__name__}: {textwrap.shorten(str(e), 300)}): point tfds_data_dir at a '
        'cifar10/3.0.2 prepared as array_record (not TFRecord), or let download=True prepare '
        'one there (that needs pip install tensorflow-cpu)') from None


def _official_order(source) -> tuple[np.ndarray, np.ndarray]:
  """A split's uint8 NHWC images and int32 labels; tfds stores them shuffled, ids give order."""
  examples = sorted(source.__getitems__(range(len(source))), key=lambda e: e['id'])
  return (np.stack([e['image'] for e in examples]),
          np.array([e['label'] for e in examples], np.int32))
