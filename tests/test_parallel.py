"""Data parallelism on the CPU with forced host devices: jit-with-sharding and pmap give the
parameters one device gives on the same global batches; two JAX processes give the parameters
one process gives."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train_helpers import REAL_CIFAR10, REPO

pytestmark = pytest.mark.skipif(not (REAL_CIFAR10 / 'data_batch_1').exists(),
                                reason=f'real CIFAR-10 not at {REAL_CIFAR10}')

# 4 steps of 64 images per epoch, 2 epochs; no evaluation or checkpoint before the end.
# Float32 reductions in another order differ by ~1e-7 after one step; training amplifies that
# to ~1e-5 after 8 steps at this learning rate, hence the tolerance of 1e-4 (parameters ~0.1).
# A real difference (per-device statistics) moves them by more than 1e-3.
TOLERANCE = 1e-4
COMMON = ['train_subset=256', 'num_epochs=2', 'checkpoint_every_epochs=0', 'learning_rate=0.01',
          'eval_every_epochs=2', 'test_subset=64', 'eval_batch_size=32']


def worker(out, workdir, *overrides, devices=8, env_extra=None):
  env = dict(os.environ, PYTHONPATH=str(REPO),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', **(env_extra or {}))
  return subprocess.Popen([sys.executable, str(REPO / 'tests' / 'train_helpers.py'), str(out),
                           str(workdir), *COMMON, *overrides], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]


def assert_same_params(a_path, b_path, atol):
  a, b = np.load(a_path), np.load(b_path)
  assert sorted(a.files) == sorted(b.files)
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
  assert worst <= atol, f'max |difference| {worst}'
  return worst


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('one')
  finish(worker(tmp / 'p.npz', tmp / 'w', 'num_devices=1'))
  return tmp / 'p.npz'


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_eight_devices_match_one_device(one_device, tmp_path, mode):
  finish(worker(tmp_path / 'p.npz', tmp_path / 'w', f'parallel={mode}'))
  assert_same_params(one_device, tmp_path / 'p.npz', atol=TOLERANCE)


def test_per_device_batch_norm_is_the_same_in_jit_and_pmap(one_device, tmp_path):
  procs = [worker(tmp_path / f'{m}.npz', tmp_path / m, f'parallel={m}', 'sync_batch_stats=False')
           for m in ('jit', 'pmap')]
  for p in procs:
    finish(p)
  assert_same_params(tmp_path / 'jit.npz', tmp_path / 'pmap.npz', atol=TOLERANCE)
  # Statistics of 8-image groups are not those of the 64-image batch: the results differ.
  a, b = np.load(one_device), np.load(tmp_path / 'jit.npz')
  assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files) > 10 * TOLERANCE


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_two_processes_match_one_process(tmp_path, mode):
  single = worker(tmp_path / 'single.npz', tmp_path / 'single', f'parallel={mode}', devices=4)
  port = free_port()
  procs = [worker(tmp_path / 'multi.npz', tmp_path / 'multi', f'parallel={mode}',
                  f'distributed.coordinator_address=127.0.0.1:{port}',
                  'distributed.num_processes=2', f'distributed.process_id={i}', devices=2)
           for i in range(2)]
  for p in [single] + procs:
    finish(p)
  assert_same_params(tmp_path / 'single.npz', tmp_path / 'multi.npz', atol=TOLERANCE)
