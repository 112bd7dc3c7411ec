"""Shared fixtures. Tests run on the CPU, with 8 forced host devices so that the multi-device
tests run in this process; the full network only through eval_shape or tiny batches. Every test
runs anywhere: training tests use generated CIFAR-format data; the real copy (CIFAR10_DATA_DIR,
else ../shared beside the repository) only adds the real-data tests."""
import os
import pathlib
import tempfile

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

REPO = pathlib.Path(__file__).resolve().parents[1]
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
