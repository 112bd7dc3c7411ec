"""CIFAR-10 through tensorflow_datasets, an optional alternative source.

tensorflow_datasets (and TensorFlow) are heavy and optional, so they are only
imported when this source is asked for.
"""
import os

import numpy as np

from input_pipeline.cifar10 import Cifar10
from flax_seresnet.errors import DataError, one_line


def load_cifar10_tfds(data_dir: str | os.PathLike[str] | None = None,
                      *,
                      download: bool = True) -> Cifar10:
  """Loads CIFAR-10 with tensorflow_datasets' 'cifar10' builder.

  Args:
    data_dir: tfds' data folder (its own layout, not the python batches);
      None uses tfds' default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    download: let tfds download and prepare the dataset when it is missing.

  Returns:
    A `Cifar10` with NHWC uint8 images and int32 labels, in tfds' order
    (which is the official order of the files for cifar10).

  Raises:
    DataError: tensorflow_datasets is not installed or loading failed.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("config.dataset='tfds' needs tensorflow_datasets: run "
                    "pip install 'flax-seresnet[tfds]', or use dataset='cifar10'") from None
  data_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    # batch_size=-1 returns each whole split as one batch of tensors.
    train, test = tfds.as_numpy(
        tfds.load('cifar10', split=['train', 'test'], data_dir=data_dir, batch_size=-1,
                  as_supervised=True, download=download))
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises many types (AssertionError, DatasetNotFoundError, ...).
    raise DataError(f"tensorflow_datasets could not load 'cifar10' from data_dir={data_dir} "
                    f'({type(e).__name__}: {one_line(e)}): set download=True or point data_dir '
                    'at a prepared tfds folder') from None
  return Cifar10(
      train_images=np.asarray(train[0], np.uint8),
      train_labels=np.asarray(train[1], np.int32),
      test_images=np.asarray(test[0], np.uint8),
      test_labels=np.asarray(test[1], np.int32),
  )
