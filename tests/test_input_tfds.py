"""The tensorflow_datasets source, against a real tfds 'cifar10' written by tfds itself."""
import io
import pathlib
import pickle
import sys

import ml_collections
import numpy as np
import pytest

from flax_seresnet.errors import DataError
from input_pipeline.cifar10 import TEST_FILE, TRAIN_FILES, load_cifar10
from input_pipeline.dataset import load_dataset
from input_pipeline.tfds_source import load_cifar10_tfds
from tests.fake_data import write_fake_cifar10

# How many real images per split the real-data test converts (PNG encoding is the slow part).
REAL_SLICE = 2000


def _tfds():
  return pytest.importorskip(
      'tensorflow_datasets',
      reason="tensorflow_datasets is not installed: pip install 'flax-seresnet[tfds]'")


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='PNG')
  return out.getvalue()


def _raw_batches(paths: list[pathlib.Path], limit: int) -> tuple[np.ndarray, list[int]]:
  """The first `limit` NHWC images and labels of pickled batches, read without our reader."""
  images, labels = [], []
  for path in paths:
    if len(labels) >= limit:
      break
    with open(path, 'rb') as f:
      batch = {k.decode() if isinstance(k, bytes) else k: v
               for k, v in pickle.load(f, encoding='bytes').items()}
    images.append(batch['data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels += list(batch['labels'])
  return np.concatenate(images)[:limit], labels[:limit]


def write_tfds_cifar10(pickles: pathlib.Path, tfds_dir: pathlib.Path, limit: int = 10**6):
  """Writes tfds' own 'cifar10' (its builder's info, keys and ids) from pickled batches.

  tfds' builder reads the binary batches with TensorFlow and encodes PNGs with it; this
  subclass reads the pickles and encodes with PIL instead, so that no TensorFlow is needed.
  """
  tfds = _tfds()
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top

  class PickledCifar10(cifar.Cifar10, skip_registration=True):
    name = 'cifar10'

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(f'{split}_', files) for split, files in
              (('train', [pickles / f for f in TRAIN_FILES]), ('test', [pickles / TEST_FILE]))}

    def _generate_examples(self, split_prefix, filepaths):
      images, labels = _raw_batches(filepaths, limit)
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {'id': f'{split_prefix}{index:05d}', 'image': _png(image), 'label': label}

  PickledCifar10(data_dir=tfds_dir, file_format='array_record').download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _config(tfds_dir, **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'dataset': 'tfds', 'data_dir': '', 'download': False, 'tfds_data_dir': str(tfds_dir),
      'train_subset': 0, 'test_subset': 0, **overrides})


def test_missing_tfds_says_how_to_install(monkeypatch):
  # A None entry in sys.modules makes `import tensorflow_datasets` fail.
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(DataError, match=r"pip install 'flax-seresnet\[tfds\]'") as info:
    load_cifar10_tfds()
  assert '\n' not in str(info.value)


def test_equals_the_pickles(tmp_path):
  pickles = write_fake_cifar10(tmp_path / 'pickles', per_batch=30, test_count=40)
  had_tensorflow = 'tensorflow' in sys.modules
  write_tfds_cifar10(pickles, tmp_path / 'tfds')
  data, expected = load_dataset(_config(tmp_path / 'tfds')), load_cifar10(pickles)
  assert had_tensorflow or 'tensorflow' not in sys.modules  # no TensorFlow needed
  for got, want in zip(data, expected):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  subset = load_dataset(_config(tmp_path / 'tfds', train_subset=7, test_subset=5))
  np.testing.assert_array_equal(subset.train_images, expected.train_images[:7])
  np.testing.assert_array_equal(subset.test_labels, expected.test_labels[:5])


def test_shuffled_in_storage(tmp_path):
  """The broken variant: reading tfds' files in storage order does not give the official one."""
  tfds = _tfds()
  pickles = write_fake_cifar10(tmp_path / 'pickles', per_batch=30, test_count=10)
  write_tfds_cifar10(pickles, tmp_path / 'tfds')
  source = tfds.data_source('cifar10', split='train', data_dir=tmp_path / 'tfds', download=False)
  stored = np.stack([e['image'] for e in source])
  assert sorted(map(bytes, stored)) == sorted(map(bytes, load_cifar10(pickles).train_images))
  assert not np.array_equal(stored, load_cifar10(pickles).train_images)


def test_not_prepared(tmp_path):
  _tfds()
  with pytest.raises(DataError, match='could not load') as info:
    load_dataset(_config(tmp_path / 'empty'))
  assert '\n' not in str(info.value) and str(tmp_path / 'empty') in str(info.value)


def test_real_batches(real_cifar10_dir, tmp_path):
  """A slice of the real batches goes through tfds unchanged, in the official order."""
  write_tfds_cifar10(real_cifar10_dir, tmp_path / 'tfds', limit=REAL_SLICE)
  data, expected = load_cifar10_tfds(tmp_path / 'tfds'), load_cifar10(real_cifar10_dir)
  np.testing.assert_array_equal(data.train_images, expected.train_images[:REAL_SLICE])
  np.testing.assert_array_equal(data.train_labels, expected.train_labels[:REAL_SLICE])
  np.testing.assert_array_equal(data.test_images, expected.test_images[:REAL_SLICE])
  np.testing.assert_array_equal(data.test_labels, expected.test_labels[:REAL_SLICE])
