"""Reading a CIFAR-10-C folder: the official layout (at a small block size: the reader derives
it from labels.npy) and hostile files, each refused in one line naming the file."""
import io
import os
import pickle

import numpy as np
import pytest

from input_pipeline import DataError, cifar10c, load_corruption, open_cifar10c

BLOCK = 6


def write_cifar10c(folder, names=('gaussian_noise', 'fog', 'frost'), block=BLOCK, seed=0):
  """The official layout: labels.npy (uint8, 5 blocks of the same labels), and per corruption
  uint8 (5 * block, 32, 32, 3) with severity s in block s - 1."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, block).astype(np.uint8)
  np.save(folder / 'labels.npy', np.tile(labels, 5))
  for name in names:
    np.save(folder / f'{name}.npy', rng.integers(0, 256, (5 * block, 32, 32, 3), np.uint8))
  return folder


def _error(callable_, *args) -> str:
  with pytest.raises(DataError) as info:
    callable_(*args)
  message = str(info.value)
  assert '\n' not in message
  return message


def test_reads_the_official_layout(tmp_path):
  folder = write_cifar10c(tmp_path / 'c')
  data = open_cifar10c(folder)
  assert data.names == ('gaussian_noise', 'frost', 'fog')  # the official order
  assert data.labels.dtype == np.int32 and data.labels.shape == (BLOCK,)
  assert np.array_equal(data.labels, np.load(folder / 'labels.npy')[:BLOCK])
  images = load_corruption(data, 'fog')
  assert images.shape == (5, BLOCK, 32, 32, 3) and images.dtype == np.uint8
  flat = np.load(folder / 'fog.npy')
  assert np.array_equal(images[2], flat[2 * BLOCK:3 * BLOCK])  # severity 3


def test_official_names_are_ours_plus_frost():
  assert cifar10c.OFFICIAL[8] == 'frost' and len(cifar10c.OFFICIAL) == 19


def _save_bytes(array) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=True)
  return buffer.getvalue()


def _fifo(path):
  os.mkfifo(path)


def _folder(path):
  path.mkdir()


def _zero_link(path):
  path.symlink_to('/dev/zero')


def _truncated(path):
  path.write_bytes(_save_bytes(np.zeros((5 * BLOCK, 32, 32, 3), np.uint8))[:5000])


def _object_array(path):
  path.write_bytes(_save_bytes(np.array([{'a': 1}] * 3, dtype=object)))


def _plain_pickle(path):
  path.write_bytes(pickle.dumps(np.zeros((5 * BLOCK, 32, 32, 3), np.uint8)))


def _wrong_dtype(path):
  np.save(path, np.zeros((5 * BLOCK, 32, 32, 3), np.int8))


def _wrong_shape(path):
  np.save(path, np.zeros((4 * BLOCK, 32, 32, 3), np.uint8))


def _too_big(path):
  np.save(path, np.zeros((5 * BLOCK + 2, 32, 32, 3), np.uint8))


HOSTILE = [(_fifo, 'not a regular file'), (_folder, 'is a folder'), (_zero_link, 'not a regular'),
           (_truncated, 'numpy reads without pickle'), (_object_array, 'without pickle'),
           (_plain_pickle, 'without pickle'), (_wrong_dtype, 'holds int8'),
           (_wrong_shape, f'holds uint8 ({4 * BLOCK}, 32, 32, 3)'), (_too_big, 'bytes, more than')]


@pytest.mark.parametrize('make,needle', HOSTILE, ids=[m.__name__ for m, _ in HOSTILE])
def test_refuses_a_hostile_corruption_file(tmp_path, make, needle):
  folder = write_cifar10c(tmp_path / 'c', names=('fog',))
  make(folder / 'gaussian_noise.npy')
  data = open_cifar10c(folder)
  assert data.names == ('gaussian_noise', 'fog')
  message = _error(load_corruption, data, 'gaussian_noise')
  assert str(folder / 'gaussian_noise.npy') in message and needle in message, message
  assert any(hint in message for hint in ('replace it with', 'fix the path', 'copy it into'))


LABELS = [(_fifo, 'not a regular file'), (_folder, 'is a folder'), (_zero_link, 'not a regular'),
          (_object_array, 'without pickle'), (_plain_pickle, 'without pickle'),
          (lambda p: np.save(p, np.zeros(7, np.uint8)), 'a multiple of 5'),
          (lambda p: np.save(p, np.zeros((5, 2), np.uint8)), 'a multiple of 5'),
          (lambda p: np.save(p, np.zeros(10, np.float32)), 'float32'),
          (lambda p: np.save(p, np.full(10, 10, np.uint8)), 'contain 10, outside 0..9'),
          (lambda p: np.save(p, np.arange(10, dtype=np.uint8) % 10), 'blocks of 2 differ'),
          (lambda p: np.save(p, np.zeros(50_000 * 8 + 5000, np.uint8)), 'bytes, more than')]


@pytest.mark.parametrize('make,needle', LABELS)
def test_refuses_hostile_labels(tmp_path, make, needle):
  folder = write_cifar10c(tmp_path / 'c')
  os.remove(folder / 'labels.npy')
  make(folder / 'labels.npy')
  message = _error(open_cifar10c, folder)
  assert str(folder / 'labels.npy') in message and needle in message, message


def test_refuses_a_folder_that_is_not_cifar10c(tmp_path):
  assert 'does not exist' in _error(open_cifar10c, tmp_path / 'none')
  (tmp_path / 'file').write_text('x')
  assert 'is not a folder' in _error(open_cifar10c, tmp_path / 'file')
  assert 'labels.npy does not exist' in _error(open_cifar10c, tmp_path)
  folder = write_cifar10c(tmp_path / 'c', names=())
  assert 'holds no <corruption>.npy' in _error(open_cifar10c, folder)


def test_a_smaller_block_must_match_every_file(tmp_path):
  """The block size comes from labels.npy; a corruption file of another size is refused."""
  folder = write_cifar10c(tmp_path / 'c', names=('fog',), block=4)
  np.save(folder / 'fog.npy', np.zeros((5 * 5, 32, 32, 3), np.uint8))
  assert 'bytes, more than' in _error(load_corruption, open_cifar10c(folder), 'fog')
