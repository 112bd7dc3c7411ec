"""Signals from outside, at exact moments of a real run (compiling, a step in either epoch,
inside a save, in evaluation): the signal is acknowledged at once, the run stops after the step
in flight, saves where it stands, says so in one line, exits 75 and releases its workdir;
resuming repeats the uninterrupted run bit for bit. A second signal exits at once."""
import json
import os
import signal
import time

import chex
import pytest

from flax_seresnet import inference, train
from tests.harness import Run, config_for, flags
from tests.train_helpers import flat_variables

def final_state(workdir):
  return flat_variables(inference.load_model(config_for(''), str(workdir))[1])


def records(workdir):
  return [{k: v for k, v in json.loads(line).items() if not k.endswith(('_s', 'per_s'))}
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def assert_one_interrupted_line(code, out, err, name, where):
  assert code == 75, err[-3000:]
  assert out == '' and 'Traceback' not in err
  last = err.splitlines()[-1]
  assert last.startswith(f'interrupted: {name} received: stopped at {where}'), last
  assert last.endswith('Run the same command again to resume.'), last
  assert err.endswith(last + '\n')  # nothing follows it


def acknowledged(name):
  return f'{name} received: stopping '


# Each case holds the run at an exact point, signals it there, waits for the acknowledgement,
# then lets it go on: the stop position is exact however slow or loaded the machine.
@pytest.mark.parametrize('name,moment,hold,where', [
    ('SIGINT', 'compile', 1, 'epoch 0 of 2; nothing was trained yet'),
    ('SIGTERM', 'step', 3, 'epoch 1 step 3 of 80 of 2; saved epoch 1 step 3 of 80'),
    ('SIGTERM', 'step', 80 + 37, 'epoch 2 step 37 of 80 of 2; saved epoch 2 step 37 of 80'),
    ('SIGHUP', 'save', 1, 'epoch 1 of 2; saved epoch 1'),
    ('SIGINT', 'eval', 1, 'epoch 1 of 2; saved epoch 1'),
])
def test_a_signal_stops_saves_and_the_resumed_run_is_bitwise_the_same(
    data_dir, uninterrupted, tmp_path, name, moment, hold, where):
  workdir = tmp_path / 'run'
  run = Run(flags(data_dir, workdir), moment, hold=hold, control=tmp_path)
  run.wait_for(f'PROBE {moment} {hold} pid=')
  run.process.send_signal(getattr(signal, name))
  run.wait_for(acknowledged(name))  # at once, from the watcher thread, while the run is held
  run.release()
  code, out, err = run.finish()
  assert_one_interrupted_line(code, out, err, name, where)
  summary = train.train_and_evaluate(config_for(data_dir), str(workdir))  # the lock was freed
  assert summary['finished']
  chex.assert_trees_all_equal(final_state(workdir), final_state(uninterrupted))
  assert records(workdir) == records(uninterrupted)


def test_a_second_signal_exits_at_once_and_the_newest_checkpoint_is_intact(
    data_dir, uninterrupted, tmp_path):
  workdir = tmp_path / 'run'
  run = Run(flags(data_dir, workdir), 'save', hold=1, control=tmp_path)
  run.wait_for('PROBE save 1 pid=')  # held inside the save of epoch 1: the first signal must wait
  run.process.send_signal(signal.SIGTERM)
  run.wait_for(acknowledged('SIGTERM'))
  run.process.send_signal(signal.SIGINT)  # still held: only the second signal can end it
  code, out, err = run.finish()
  assert code == 128 + signal.SIGINT, err[-3000:]
  assert err.splitlines()[-1] == ('stopped at once by a second signal (SIGINT); the newest '
                                  'checkpoint is intact') and out == ''
  train.train_and_evaluate(config_for(data_dir), str(workdir))
  chex.assert_trees_all_equal(final_state(workdir), final_state(uninterrupted))


def test_library_callers_get_the_same_clean_stop(data_dir, tmp_path, monkeypatch):
  """train_and_evaluate installs the handlers itself: a signal raises errors.Interrupted, after
  the step in flight, and the handlers are restored afterwards."""
  from flax_seresnet.errors import Interrupted
  before, step, calls = signal.getsignal(signal.SIGTERM), train.Trainer.train_step, [0]

  def signalling_step(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 5:
      os.kill(os.getpid(), signal.SIGTERM)
      while self.stop.requested is None:  # the watcher thread takes it: wait for that, not a time
        time.sleep(0.01)
    return step(self, *args, **kwargs)

  monkeypatch.setattr(train.Trainer, 'train_step', signalling_step)
  with pytest.raises(Interrupted, match='SIGTERM received: stopped at epoch 1 step 5 of 80 '):
    train.train_and_evaluate(config_for(data_dir), str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is before


def test_an_ignored_signal_stays_ignored(data_dir, tmp_path):
  """nohup's SIGHUP (or a background job's SIGINT) is not taken over: the run goes on."""
  run = Run([*flags(data_dir, tmp_path), '--config.num_epochs=1'], env={'PROBE_IGNORE': 'SIGHUP'})
  run.wait_for('training on ')
  run.process.send_signal(signal.SIGHUP)
  code, out, err = run.finish()
  assert code == 0 and out.startswith('summary: '), err[-2000:]
