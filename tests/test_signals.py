"""Signals from outside, at several moments of a real run (compiling, mid-epoch, inside a save,
in evaluation): the run stops within seconds, saves where it stands, says so in one line, exits
75 and releases its workdir; resuming repeats the uninterrupted run bit for bit. A second signal
exits at once."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import chex
import pytest

from configs import smoke
from flax_seresnet import inference, train
from tests import fake_data
from tests.train_helpers import REPO, flat_variables

# 80 steps an epoch, 2 epochs: time enough to land in the middle of one.
OVERRIDES = {'model.widths': (8, 16, 16), 'batch_size': 4, 'train_subset': 0, 'num_epochs': 2,
             'eval_batch_size': 64, 'num_devices': 1, 'checkpoint_every_epochs': 1,
             'progress_bar': False}


def config_for(data_dir, **overrides):
  config = smoke.get_config()
  config.update_from_flattened_dict({**OVERRIDES, 'data_dir': str(data_dir), **overrides})
  return config


def flags(data_dir, workdir):
  values = {**OVERRIDES, 'data_dir': data_dir}
  return ['--config', 'configs/smoke.py', f'--workdir={workdir}',
          *[f'--config.{k}={str(v).replace(" ", "")}' for k, v in values.items()]]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return fake_data.write_fake_cifar10(tmp_path_factory.mktemp('sig'), per_batch=64,
                                      test_count=64, learnable=True)


@pytest.fixture(scope='module')
def uninterrupted(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('straight')
  train.train_and_evaluate(config_for(data_dir), str(workdir))
  return workdir


def final_state(workdir):
  return flat_variables(inference.load_model(config_for(''), str(workdir))[1])


def records(workdir):
  return [{k: v for k, v in json.loads(line).items() if not k.endswith(('_s', 'per_s'))}
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


class Run:
  """main.py (through tests/cli_probe.py) in a subprocess whose stderr is read as it comes."""

  def __init__(self, args, moment='none', env=None, command=None):
    self.lines, self.seen = [], threading.Condition()
    self.process = subprocess.Popen(
        command or [sys.executable, str(REPO / 'tests' / 'cli_probe.py'), moment, *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu', **(env or {})})
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.process.stderr:
      with self.seen:
        self.lines.append(line)
        self.seen.notify_all()

  def wait_for(self, text, timeout=120, times=1):
    deadline = time.monotonic() + timeout
    with self.seen:
      while sum(text in line for line in self.lines) < times:
        assert self.process.poll() is None, ''.join(self.lines)[-3000:]
        assert self.seen.wait(deadline - time.monotonic()), (text, ''.join(self.lines))

  def finish(self, timeout=120):
    self.process.wait(timeout)
    time.sleep(0.2)  # the reader thread drains the pipe
    return self.process.returncode, self.process.stdout.read(), ''.join(self.lines)


def assert_one_interrupted_line(code, out, err, name, where):
  assert code == 75, err[-3000:]
  assert out == '' and 'Traceback' not in err
  last = err.splitlines()[-1]
  assert last.startswith(f'interrupted: {name} received: stopped at {where}'), last
  assert last.endswith('Run the same command again to resume.'), last
  assert err.endswith(last + '\n')  # nothing follows it


@pytest.mark.parametrize('name,marker,moment,where', [
    ('SIGINT', 'compiling the train step', 'none', 'epoch 0 of 2; nothing was trained yet'),
    ('SIGTERM', 'about ', 'none', 'epoch 1 step '),
    ('SIGHUP', 'PROBE save', 'save', 'epoch 1 of 2; saved epoch 1'),
    ('SIGINT', 'PROBE eval', 'eval', 'epoch 1 of 2; saved epoch 1'),
])
def test_a_signal_stops_saves_and_the_resumed_run_is_bitwise_the_same(
    data_dir, uninterrupted, tmp_path, name, marker, moment, where):
  workdir = tmp_path / 'run'
  # While compiling: a cold compilation cache of its own, so that it really compiles.
  env = {'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'cache')} if name == 'SIGINT' and (
      moment == 'none') else {}
  run = Run(flags(data_dir, workdir), moment, env)
  run.wait_for(marker)
  time.sleep(0.5 if moment == 'none' else 0)
  sent = time.monotonic()
  run.process.send_signal(getattr(signal, name))
  code, out, err = run.finish()
  assert time.monotonic() - sent < 30  # the held save or evaluation takes 2 s of it
  assert_one_interrupted_line(code, out, err, name, where)
  summary = train.train_and_evaluate(config_for(data_dir), str(workdir))  # the lock was freed
  assert summary['finished']
  chex.assert_trees_all_equal(final_state(workdir), final_state(uninterrupted))
  assert records(workdir) == records(uninterrupted)


def test_a_second_signal_exits_at_once_and_the_newest_checkpoint_is_intact(
    data_dir, uninterrupted, tmp_path):
  workdir = tmp_path / 'run'
  run = Run(flags(data_dir, workdir), 'save')
  run.wait_for('PROBE save')  # held inside the save of epoch 1: the first signal must wait
  run.process.send_signal(signal.SIGTERM)
  time.sleep(0.3)
  sent = time.monotonic()
  run.process.send_signal(signal.SIGINT)
  code, out, err = run.finish()
  assert time.monotonic() - sent < 1.5 and code == 128 + signal.SIGINT, err[-3000:]
  assert err.splitlines()[-1] == ('stopped at once by a second signal (SIGINT); the newest '
                                  'checkpoint is intact') and out == ''
  train.train_and_evaluate(config_for(data_dir), str(workdir))
  chex.assert_trees_all_equal(final_state(workdir), final_state(uninterrupted))


def test_library_callers_get_the_same_clean_stop(data_dir, uninterrupted, tmp_path):
  """train_and_evaluate installs the handlers itself: a signal raises errors.Interrupted."""
  from flax_seresnet.errors import Interrupted
  before = signal.getsignal(signal.SIGTERM)
  timer = threading.Timer(1.0, os.kill, [os.getpid(), signal.SIGTERM])
  config = config_for(data_dir, batch_size=2)  # 160 steps an epoch
  timer.start()
  with pytest.raises(Interrupted, match='SIGTERM received: stopped at epoch'):
    train.train_and_evaluate(config, str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is before  # the handlers are restored afterwards


def test_an_ignored_signal_stays_ignored(data_dir, tmp_path):
  """nohup's SIGHUP (or a background job's SIGINT) is not taken over: the run goes on."""
  run = Run([*flags(data_dir, tmp_path), '--config.num_epochs=1'], env={'PROBE_IGNORE': 'SIGHUP'})
  run.wait_for('training on ')
  run.process.send_signal(signal.SIGHUP)
  code, out, err = run.finish()
  assert code == 0 and out.startswith('summary: '), err[-2000:]
