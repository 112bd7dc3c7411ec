"""Data parallelism on 8 forced CPU devices (tests/conftest.py): one train step on 8 devices, with
jit and with pmap, moves every parameter as one device does; a deliberately broken variant fails
the same check. Two JAX processes train as one process does."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from flax_seresnet import optim, parallel, steps, train
from flax_seresnet.model import model_from_config
from tests.train_helpers import REPO, flat_variables, tiny_config

# XLA's CPU code differs between processors, so float32 sums in another order differ by a few
# ulps: compare each leaf's difference with that leaf's own update in the same step.
RELATIVE = 1e-3


def variables(state):
  return {'params': state.params, 'batch_stats': state.batch_stats}


def one_step(config, data, indices, step_fn=None):
  """(variables before, variables after) one train step of a fresh state on `indices`."""
  dp = parallel.DataParallel(config)
  model = model_from_config(config.model, **dp.model_overrides())
  state = steps.create_train_state(model, optim.make_optimizer(config, 5), jax.random.key(0))
  before = flat_variables(variables(state))
  train_fn = dp.compile_train(step_fn or train.train_step_of(config))
  key_data = dp.replicate(jax.random.key_data(jax.random.key(1)))
  new_state, _ = train_fn(dp.replicate(state), dp.replicate(data), dp.shard(indices), key_data,
                          dp.stop_flags(False))
  host = dp.to_host(new_state)
  return before, flat_variables(variables(host))


def worst_ratio(before, expected, got):
  """max over leaves of max|got - expected| / max|expected - before|."""
  return max(float(np.max(np.abs(got[k] - expected[k])) / np.max(np.abs(expected[k] - before[k])))
             for k in expected)


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  data = {'images': rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
          'labels': rng.integers(0, 10, (64,), dtype=np.int32)}
  return data, rng.permutation(64).astype(np.int32)


@pytest.fixture(scope='module')
def reference(batch, tmp_path_factory):
  return one_step(tiny_config(num_devices=1, learning_rate=0.1), *batch)


@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_eight_devices_take_the_step_of_one_device(batch, reference, mode):
  before, expected = reference
  _, got = one_step(tiny_config(num_devices=8, parallel=mode, learning_rate=0.1), *batch)
  assert worst_ratio(before, expected, got) < RELATIVE


def test_the_check_fails_for_unsynchronised_gradients(batch, reference):
  """pmap without the gradient average: each device steps on its own eighth of the batch."""
  config = tiny_config(num_devices=8, parallel='pmap', learning_rate=0.1)

  def unsynchronised(state, data, indices, key_data, *, axis_name):
    del axis_name
    return train.train_step_of(config)(state, data, indices, key_data)
  before, expected = reference
  _, got = one_step(config, *batch, step_fn=unsynchronised)
  assert worst_ratio(before, expected, got) > 0.05


def test_per_device_batch_norm_is_the_same_in_jit_and_pmap(batch, reference):
  results = [one_step(tiny_config(num_devices=8, parallel=mode, sync_batch_stats=False,
                                  learning_rate=0.1), *batch) for mode in ('jit', 'pmap')]
  (before, jit_step), (_, pmap_step) = results
  assert worst_ratio(before, jit_step, pmap_step) < RELATIVE
  # Statistics of 8-image groups are not those of the 64-image batch: the same check fails.
  assert worst_ratio(reference[0], reference[1], jit_step) > 0.05


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_train_as_one_process(learnable_cifar10_dir, tmp_path):
  """2 processes x 2 devices, with jit and with pmap, against this process with 4 devices and
  jit (jit and pmap agree in one process: above): the whole loop, for one step."""
  overrides = {'data_dir': str(learnable_cifar10_dir), 'num_epochs': 1, 'train_subset': 64,
               'checkpoint_every_epochs': 0, 'eval_every_epochs': 0, 'num_devices': 0}
  port = free_port()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             XLA_FLAGS=os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=2'))
  procs = [subprocess.Popen(
      [sys.executable, str(REPO / 'tests' / 'train_helpers.py'), str(tmp_path / 'two'),
       str(tmp_path / 'two'), *[f'{k}={v}' for k, v in overrides.items()], 'parallel=jit,pmap',
       f'distributed.coordinator_address=127.0.0.1:{port}', 'distributed.num_processes=2',
       f'distributed.process_id={i}'], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  with train.Trainer(tiny_config(**dict(overrides, num_devices=4)), str(tmp_path / 'one')) as trainer:
    before = flat_variables(variables(trainer.dp.to_host(trainer.state)))
    trainer.run()
    expected = flat_variables(variables(trainer.dp.to_host(trainer.state)))
  for proc in procs:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
  for mode in ('jit', 'pmap'):
    two = np.load(tmp_path / f'two_{mode}.npz')
    got = {k[len('after/'):]: two[k] for k in two.files if k.startswith('after/')}
    for key, value in before.items():  # the same initial state
      np.testing.assert_array_equal(two[f'before/{key}'], value)
    assert worst_ratio(before, expected, got) < RELATIVE, mode
