"""Facts about the real CIFAR-10 (see ../shared/data/README.md) checked through the loader."""
import pathlib
import time

import numpy as np
import pytest

from input_pipeline import class_names, load_cifar10

DATA_DIR = pathlib.Path(__file__).parents[1].parent / 'shared/data/cifar-10-batches-py'

pytestmark = pytest.mark.skipif(
    not (DATA_DIR / 'data_batch_1').is_file(),
    reason=f'the real CIFAR-10 is not at {DATA_DIR} (see shared/data/README.md)')


@pytest.fixture(scope='module')
def loaded():
  # The first load in the process: page faults included, as in training.
  start = time.perf_counter()
  data = load_cifar10(DATA_DIR)
  return data, time.perf_counter() - start


def test_load_time(loaded):
  _, seconds = loaded
  print(f'\nload_cifar10 took {seconds:.2f} s')
  # The target is 2 s; the slack absorbs a busy shared test machine.
  assert seconds <= 4.0


def test_shapes_and_counts(loaded):
  data, _ = loaded
  assert data.train_images.shape == (50000, 32, 32, 3)
  assert data.test_images.shape == (10000, 32, 32, 3)
  assert data.train_images.dtype == data.test_images.dtype == np.uint8
  assert data.train_labels.dtype == data.test_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(data.train_labels, minlength=10), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), [1000] * 10)


def test_first_labels(loaded):
  data, _ = loaded
  np.testing.assert_array_equal(data.train_labels[:10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3])
  np.testing.assert_array_equal(data.test_labels[:16],
                                [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8])


def _mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of pixels / 255, in float64, in chunks to bound memory."""
  total = np.zeros(3)
  squares = np.zeros(3)
  for start in range(0, len(images), 5000):
    chunk = images[start:start + 5000].reshape(-1, 3).astype(np.float64)
    total += chunk.sum(axis=0)
    squares += np.square(chunk).sum(axis=0)
  count = len(images) * 32 * 32
  mean = total / count
  return mean / 255, np.sqrt(squares / count - mean**2) / 255


def test_channel_statistics(loaded):
  data, _ = loaded
  mean, std = _mean_std(data.train_images)
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-3)
  np.testing.assert_allclose(std, [0.2470, 0.2435, 0.2616], atol=1e-3)
  test_mean, _ = _mean_std(data.test_images)
  np.testing.assert_allclose(test_mean, [0.4942, 0.4851, 0.4504], atol=1e-3)


def test_class_names():
  assert class_names(DATA_DIR) == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                                   'horse', 'ship', 'truck']
