"""Loading and validating CIFAR-10 python batches and unlabeled sets (crafted files)."""
import pickle

import numpy as np
import pytest

from flax_seresnet.errors import DataError
from input_pipeline import Cifar10, class_names, load_cifar10, load_unlabeled
from tests.fake_data import CLASS_NAMES, make_batch, write_fake_cifar10, write_pickle


def _nhwc(flat: np.ndarray) -> np.ndarray:
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.fixture
def folder(tmp_path):
  return write_fake_cifar10(tmp_path / 'cifar', per_batch=6, test_count=4)


def _error(callable_, *args, **kwargs) -> str:
  """Runs callable_, expects a DataError, checks it is one line, returns its message."""
  with pytest.raises(DataError) as info:
    callable_(*args, **kwargs)
  message = str(info.value)
  assert '\n' not in message
  assert isinstance(info.value, ValueError)
  return message


def test_loads_in_official_order_as_nhwc(folder):
  data = load_cifar10(folder)
  assert isinstance(data, Cifar10)
  assert data.train_images.shape == (30, 32, 32, 3)
  assert data.test_images.shape == (4, 32, 32, 3)
  assert data.train_images.dtype == data.test_images.dtype == np.uint8
  assert data.train_labels.dtype == data.test_labels.dtype == np.int32
  assert data.train_images.flags.c_contiguous
  for i in range(5):
    batch = make_batch(6, i)
    np.testing.assert_array_equal(data.train_images[6 * i:6 * i + 6], _nhwc(batch['data']))
    np.testing.assert_array_equal(data.train_labels[6 * i:6 * i + 6], batch['labels'])
  np.testing.assert_array_equal(data.test_images, _nhwc(make_batch(4, 5)['data']))


def test_pixel_layout(tmp_path):
  """Row layout is R plane, G plane, B plane, each 32 rows of 32 pixels."""
  folder = write_fake_cifar10(tmp_path / 'cifar', per_batch=1, test_count=1)
  batch = make_batch(1, 0)
  batch['data'][0] = 0
  batch['data'][0, 0 * 1024 + 2 * 32 + 5] = 11  # red, row 2, column 5
  batch['data'][0, 1 * 1024 + 0] = 22           # green, row 0, column 0
  batch['data'][0, 2 * 1024 + 31 * 32 + 31] = 33  # blue, row 31, column 31
  write_pickle(folder / 'data_batch_1', batch)
  image = load_cifar10(folder).train_images[0]
  assert image[2, 5, 0] == 11 and image[0, 0, 1] == 22 and image[31, 31, 2] == 33
  assert image.sum() == 66


def test_bytes_keys_nhwc_data_and_array_labels(folder):
  """Python 2 style bytes keys, NHWC data and numpy labels are all accepted."""
  batch = make_batch(6, 2)
  write_pickle(folder / 'data_batch_3', {b'data': _nhwc(batch['data']).copy(),
                                         b'labels': np.asarray(batch['labels'], np.int64)})
  data = load_cifar10(folder)
  np.testing.assert_array_equal(data.train_images[12:18], _nhwc(batch['data']))
  np.testing.assert_array_equal(data.train_labels[12:18], batch['labels'])


def test_folder_missing(tmp_path):
  message = _error(load_cifar10, tmp_path / 'nowhere')
  assert str(tmp_path / 'nowhere') in message and 'does not exist' in message


def test_data_dir_is_a_file(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  message = _error(load_cifar10, path)
  assert str(path) in message and 'is a file' in message and 'does not exist' not in message


@pytest.mark.parametrize('name', ['data_batch_3', 'test_batch'])
def test_file_missing(folder, name):
  (folder / name).unlink()
  message = _error(load_cifar10, folder)
  assert str(folder / name) in message and 'does not exist' in message


def test_batch_is_a_folder(folder):
  (folder / 'data_batch_2').unlink()
  (folder / 'data_batch_2').mkdir()
  message = _error(load_cifar10, folder)
  assert str(folder / 'data_batch_2') in message and 'is a folder' in message
  assert 'does not exist' not in message


def test_numpy_scalar_labels_and_empty_test_batch(folder):
  """Labels as a list of numpy scalars (numpy.core.multiarray.scalar) and 0 test images load."""
  batch = make_batch(6, 1)
  batch['labels'] = [np.int64(label) for label in batch['labels']]
  write_pickle(folder / 'data_batch_2', batch)
  write_pickle(folder / 'test_batch', {'data': np.zeros((0, 3072), np.uint8), 'labels': []})
  data = load_cifar10(folder)
  np.testing.assert_array_equal(data.train_labels[6:12], make_batch(6, 1)['labels'])
  assert data.test_images.shape == (0, 32, 32, 3) and data.test_labels.dtype == np.int32


def test_truncated_file(folder):
  path = folder / 'data_batch_4'
  path.write_bytes(path.read_bytes()[:5000])
  message = _error(load_cifar10, folder)
  assert str(path) in message and 'truncated' in message


def test_not_a_pickle(folder):
  (folder / 'test_batch').write_text('<html>404 not found</html>')
  assert 'not valid' in _error(load_cifar10, folder)


def test_not_a_dict(folder):
  write_pickle(folder / 'data_batch_1', [1, 2, 3])
  assert 'not a dict' in _error(load_cifar10, folder)


@pytest.mark.parametrize('key', ['data', 'labels'])
def test_missing_key(folder, key):
  batch = make_batch(6, 0)
  del batch[key]
  write_pickle(folder / 'data_batch_1', batch)
  message = _error(load_cifar10, folder)
  assert f"no '{key}' entry" in message and 'data_batch_1' in message


@pytest.mark.parametrize('data, expected', [
    (np.zeros((6, 3072), np.float32), 'float32'),
    (np.zeros((6, 3072), np.int64), 'int64'),
    (np.zeros((6, 1000), np.uint8), '(6, 1000)'),
    (np.zeros((6, 3, 32, 32), np.uint8), '(6, 3, 32, 32)'),
    (np.zeros(3072, np.uint8), '(3072,)'),
    ([[0] * 3072] * 6, 'list'),
])
def test_bad_data(folder, data, expected):
  batch = make_batch(6, 0)
  batch['data'] = data
  write_pickle(folder / 'data_batch_2', batch)
  message = _error(load_cifar10, folder)
  assert expected in message and 'data_batch_2' in message


@pytest.mark.parametrize('labels, expected', [
    ([0, 1, 2, 3, 4, 10], 'contain 10'),
    ([0, 1, -1, 3, 4, 5], 'contain -1'),
    ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 'dtype float64'),
    ([[0, 1, 2, 3, 4, 5]], 'shape (1, 6)'),
    ([[0, 1], [2]], 'cannot be made into an array'),
    ([True] * 6, 'dtype bool'),
    ([0, 1, 2, 3, 4], '6 images but 5 labels'),
    ([0, 1, 2, 3, 4, 5, 6], '6 images but 7 labels'),
])
def test_bad_labels(folder, labels, expected):
  batch = make_batch(6, 0)
  batch['labels'] = labels
  write_pickle(folder / 'test_batch', batch)
  message = _error(load_cifar10, folder)
  assert expected in message and 'test_batch' in message


def test_class_names(folder):
  assert class_names(folder) == list(CLASS_NAMES)
  write_pickle(folder / 'batches.meta', {b'label_names': [b'a', b'b']})
  assert 'label_names' in _error(class_names, folder)


# --- load_unlabeled


@pytest.mark.parametrize('layout', ['flat', 'nhwc'])
@pytest.mark.parametrize('key_type', [str, bytes])
def test_unlabeled(tmp_path, layout, key_type):
  flat = make_batch(5, 3)['data']
  data = flat if layout == 'flat' else _nhwc(flat).copy()
  ids = np.arange(100, 105)
  path = tmp_path / 'unlabeled.pkl'
  keys = ('data', 'ids') if key_type is str else (b'data', b'ids')
  write_pickle(path, dict(zip(keys, (data, ids))), protocol=pickle.HIGHEST_PROTOCOL)
  images, got_ids = load_unlabeled(path)
  assert images.dtype == np.uint8 and images.shape == (5, 32, 32, 3)
  np.testing.assert_array_equal(images, _nhwc(flat))
  np.testing.assert_array_equal(got_ids, ids)


@pytest.mark.parametrize('ids', [['a.png', 'b.png'], [np.int64(4), np.int64(9)], [0.5, 1.5]])
def test_unlabeled_ids(tmp_path, ids):
  """Strings, lists of numpy scalars (numpy.core.multiarray.scalar) and floats are ids."""
  path = tmp_path / 'unlabeled.pkl'
  write_pickle(path, {'data': make_batch(2, 0)['data'], 'ids': ids})
  _, got = load_unlabeled(path)
  assert got.tolist() == [i.item() if isinstance(i, np.generic) else i for i in ids]


@pytest.mark.parametrize('content, expected', [
    ({'data': np.zeros((3, 3072), np.uint8)}, "no 'ids' entry"),
    ({'ids': [1, 2, 3]}, "no 'data' entry"),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': [1, 2]}, '3 images but 2 ids'),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': [[1, 2, 3]]}, 'shape (1, 3)'),
    ({'data': np.zeros((3, 32, 32, 4), np.uint8), 'ids': [1, 2, 3]}, '(3, 32, 32, 4)'),
    ({'data': np.zeros((3, 3072), np.float64), 'ids': [1, 2, 3]}, 'float64'),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': [1, 2, 1]}, 'repeat 1'),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': ['a', 'b', 'b']}, 'repeat b'),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': [1.0, float('nan'), 2.0]}, 'NaN'),
    ({'data': np.zeros((3, 3072), np.uint8), 'ids': np.array([1.0, 2.0, np.nan])}, 'NaN'),
    ({'data': np.zeros((2, 3072), np.uint8), 'ids': [True, False]}, 'dtype bool'),
])
def test_unlabeled_errors(tmp_path, content, expected):
  path = tmp_path / 'unlabeled.pkl'
  write_pickle(path, content)
  message = _error(load_unlabeled, path)
  assert expected in message and str(path) in message


def test_unlabeled_missing_and_truncated(tmp_path):
  path = tmp_path / 'unlabeled.pkl'
  assert 'does not exist' in _error(load_unlabeled, path)
  write_pickle(path, {'data': np.zeros((3, 3072), np.uint8), 'ids': [1, 2, 3]})
  path.write_bytes(path.read_bytes()[:-100])
  assert 'truncated' in _error(load_unlabeled, path)
