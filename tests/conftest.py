"""Shared fixtures. Tests run on the CPU, with 8 forced host devices so that the multi-device
tests run in this process; the full network only through eval_shape or tiny batches. Every test
runs anywhere: training tests use generated CIFAR-format data; the real copy (CIFAR10_DATA_DIR,
else ../shared beside the repository) only adds the real-data tests."""
import http.server
import io
import os
import pathlib
import tarfile
import tempfile
import threading

# XLA's CPU backend at optimisation level 0 compiles the tiny test networks several times faster
# (the same IEEE float32 arithmetic; execution speed does not matter for them).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One compilation cache for this test session and its subprocesses: the tiny training runs
# compile the same steps many times.
# With pytest-xdist (run.sh: -n 2) the workers share it through the run's id.
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), f'jax_cache_{_RUN}')
                      if _RUN else tempfile.mkdtemp(prefix='jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

from tests import fake_data  # noqa: E402
from tests.harness import Handler, config_for  # noqa: E402

from tests.train_helpers import REPO  # noqa: E402  (one definition)
REAL_CIFAR10 = pathlib.Path(os.environ.get(
    'CIFAR10_DATA_DIR', REPO.parent / 'shared' / 'data' / 'cifar-10-batches-py'))


@pytest.fixture(scope='session')
def real_cifar10_dir():
  if not (REAL_CIFAR10 / 'data_batch_1').exists():
    pytest.skip(f'real CIFAR-10 not found at {REAL_CIFAR10} (set CIFAR10_DATA_DIR)')
  return REAL_CIFAR10


@pytest.fixture(scope='session')
def learnable_cifar10_dir(tmp_path_factory):
  """A CIFAR-format folder of 5 x 64 training and 128 test images a tiny network learns fast."""
  return fake_data.write_fake_cifar10(tmp_path_factory.mktemp('cifar'), per_batch=64,
                                      test_count=128, learnable=True)


# The run that the signal, file and command-line tests share: 80 steps an epoch, 2 epochs.
@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return fake_data.write_fake_cifar10(tmp_path_factory.mktemp('sig'), per_batch=64,
                                      test_count=64, learnable=True)


@pytest.fixture(scope='session')
def uninterrupted(data_dir, tmp_path_factory):
  """That run, trained without a break: what every interrupted and resumed run must equal."""
  from flax_seresnet import train  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('straight')
  train.train_and_evaluate(config_for(data_dir), str(workdir))
  return workdir


@pytest.fixture(scope='session')
def no_torch(tmp_path_factory):
  """A PYTHONPATH without torch (and so without ONNX): export's cases are seconds faster."""
  folder = tmp_path_factory.mktemp('no_torch')
  (folder / 'torch').mkdir()
  (folder / 'torch' / '__init__.py').write_text(
      "raise ImportError('no torch here', name='torch')\n")
  return f'{folder}:{REPO}'


@pytest.fixture(scope='session')
def server():
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  httpd.routes = {}
  httpd.daemon_threads = True
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


@pytest.fixture(scope='session')
def good_tarball(tmp_path_factory) -> bytes:
  """A tarball laid out like the official one, with small fake batches."""
  source = fake_data.write_fake_cifar10(tmp_path_factory.mktemp('src') / 'cifar-10-batches-py',
                              per_batch=4, test_count=3)
  (source / 'readme.html').write_text('<html></html>')
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    tar.add(source, arcname='cifar-10-batches-py')
  return buffer.getvalue()
