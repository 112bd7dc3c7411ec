"""The optional tensorflow_datasets source."""
import sys

import numpy as np
import pytest

from input_pipeline import DataError, load_cifar10_tfds


def test_missing_tfds_says_how_to_install(monkeypatch):
  # A None entry in sys.modules makes `import tensorflow_datasets` fail.
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(DataError, match=r"pip install 'flax-seresnet\[tfds\]'") as info:
    load_cifar10_tfds()
  assert '\n' not in str(info.value)


def test_load_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    data = load_cifar10_tfds()
  for images, labels in ((data.train_images, data.train_labels),
                         (data.test_images, data.test_labels)):
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert labels.dtype == np.int32 and labels.shape == (len(images),)
    assert len(images) > 0 and ((labels >= 0) & (labels < 10)).all()
