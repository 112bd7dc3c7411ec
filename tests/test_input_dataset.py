"""load_dataset: where the CIFAR-10 folder comes from, downloads into it, subsets."""
import functools
import logging
import socket

import ml_collections
import numpy as np
import pytest

from flax_seresnet.errors import DataError
from input_pipeline import dataset
from input_pipeline.download import OFFICIAL_URL, download_cifar10
from tests.fake_data import write_fake_cifar10
from tests.harness import serve

CACHED = ('flax-seresnet', 'cifar-10-batches-py')


def _config(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'dataset': 'cifar10', 'data_dir': '', 'download': False, 'tfds_data_dir': '',
      'train_subset': 0, 'test_subset': 0, **overrides})


@pytest.fixture
def env(monkeypatch, tmp_path):
  """No $CIFAR10_DATA_DIR, the cache under tmp_path/cache, and no real download."""
  monkeypatch.delenv(dataset.ENV_VAR, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  monkeypatch.setattr(dataset, 'download_cifar10', _no_download)
  return monkeypatch


def _no_download(folder):
  raise AssertionError(f'unexpected download into {folder}')


def _use_url(monkeypatch, url: str, md5: str = '0' * 32) -> None:
  monkeypatch.setattr(dataset, 'download_cifar10', functools.partial(
      download_cifar10, url=url, md5=md5, progress=False, timeout=5))


def _error(config) -> str:
  with pytest.raises(DataError) as info:
    dataset.load_dataset(config)
  message = str(info.value)
  assert '\n' not in message
  return message


def test_resolution_order(env, tmp_path):
  # Three folders told apart by their size: 5 * per_batch training images.
  given = write_fake_cifar10(tmp_path / 'given', per_batch=1, test_count=1)
  from_env = write_fake_cifar10(tmp_path / 'env', per_batch=2, test_count=1)
  write_fake_cifar10(tmp_path.joinpath('cache', *CACHED), per_batch=3, test_count=1)
  env.setenv(dataset.ENV_VAR, str(from_env))
  assert len(dataset.load_dataset(_config(data_dir=str(given))).train_labels) == 5
  assert len(dataset.load_dataset(_config()).train_labels) == 10
  env.setenv(dataset.ENV_VAR, '')  # empty counts as unset
  assert len(dataset.load_dataset(_config()).train_labels) == 15
  # Without XDG_CACHE_HOME the cache is ~/.cache.
  env.delenv('XDG_CACHE_HOME')
  env.setenv('HOME', str(tmp_path / 'home'))
  write_fake_cifar10(tmp_path.joinpath('home', '.cache', *CACHED), per_batch=4, test_count=1)
  assert dataset.cifar10_dir(_config()) == tmp_path.joinpath('home', '.cache', *CACHED)
  assert len(dataset.load_dataset(_config()).train_labels) == 20


def test_download_into_the_cache(env, server, good_tarball, tmp_path, caplog):
  url, md5 = serve(server, 'cache.tar.gz', good_tarball)
  _use_url(env, url, md5)
  caplog.set_level(logging.INFO)
  data = dataset.load_dataset(_config())
  cache = tmp_path.joinpath('cache', *CACHED)
  assert (cache / 'data_batch_5').is_file() and data.train_images.shape == (20, 32, 32, 3)
  assert f'from {cache}: 20 training and 3 test images' in caplog.text
  del server.routes['/cache.tar.gz']  # the second load reads the folder, no download
  np.testing.assert_array_equal(dataset.load_dataset(_config()).test_images, data.test_images)


def test_given_folder_downloads_only_when_asked(env, server, good_tarball, tmp_path):
  url, md5 = serve(server, 'given.tar.gz', good_tarball)
  folder = tmp_path / 'given'
  message = _error(_config(data_dir=str(folder)))
  assert f'config.data_dir={folder} does not exist' in message
  assert OFFICIAL_URL in message and 'config.download=True' in message
  env.setenv(dataset.ENV_VAR, str(folder))
  assert f'${dataset.ENV_VAR}={folder} does not exist' in _error(_config())
  assert not folder.exists()
  _use_url(env, url, md5)
  assert len(dataset.load_dataset(_config(download=True)).train_labels) == 20
  assert (folder / 'test_batch').is_file()


def test_offline(env, tmp_path):
  with socket.socket() as sock:  # a port nothing listens on
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  _use_url(env, f'http://127.0.0.1:{port}/c.tar.gz')
  message = _error(_config())
  cache = tmp_path.joinpath('cache', *CACHED)
  assert message.startswith('could not download') and OFFICIAL_URL in message
  assert f'so that {cache} holds' in message
  assert 'config.data_dir' in message and f'${dataset.ENV_VAR}' in message
  assert not cache.exists() and not any(cache.parent.iterdir())


def test_folder_is_a_file(env, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  assert 'is a file' in _error(_config(data_dir=str(tmp_path / 'file'), download=True))
  cache = tmp_path.joinpath('cache', *CACHED)
  cache.parent.mkdir(parents=True)
  cache.write_text('not a folder')
  message = _error(_config())
  assert f'the cache folder={cache} is a file' in message and 'config.data_dir' in message


def test_subsets_and_synthetic(env, tmp_path):
  folder = write_fake_cifar10(tmp_path / 'given', per_batch=4, test_count=6)
  full = dataset.load_dataset(_config(data_dir=str(folder)))
  cut = dataset.load_dataset(_config(data_dir=str(folder), train_subset=7, test_subset=6))
  for name in ('train_images', 'train_labels'):
    np.testing.assert_array_equal(getattr(cut, name), getattr(full, name)[:7])
  np.testing.assert_array_equal(cut.test_images, full.test_images)
  assert 'config.train_subset=21 but the train set has only 20' in _error(
      _config(data_dir=str(folder), train_subset=21))
  assert 'config.test_subset=7' in _error(_config(data_dir=str(folder), test_subset=7))
  data = dataset.load_dataset(_config(dataset='synthetic', train_subset=10))
  assert data.train_images.shape == (10, 32, 32, 3) and data.test_labels.shape == (10000,)
  assert data.train_images.dtype == np.uint8 and data.test_labels.dtype == np.int32
