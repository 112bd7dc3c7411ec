"""Several processes on 127.0.0.1: a signal to one of them stops all at the same step; a process
killed mid-run (process 0 included) ends the other at once, a stopped one after
config.distributed.timeout_s, one that never starts and an unreachable coordinator within it,
each with one line naming what is missing (exit 4); a bug in one process shows its traceback at
once, and the other names it."""
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time

import pytest

from tests.harness import Run, flags

TIMEOUT_S = 5


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(data_dir, workdir, port, ids=(0, 1), env=None, moment='none', **extra):
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=1'),
         **(env or {})}
  settings = {'num_devices': 0, 'distributed.coordinator_address': f'127.0.0.1:{port}',
              'distributed.num_processes': 2, 'distributed.timeout_s': TIMEOUT_S, **extra}
  runs = []
  for i in ids:
    args = [*flags(data_dir, workdir), *[f'--config.{k}={v}' for k, v in settings.items()],
            f'--config.distributed.process_id={i}']
    runs.append(Run([a for a in args if a != '--config.num_devices=1'], moment, env=env))
  return runs


def last_line(err):
  assert 'Traceback' not in err, err[-3000:]
  return err.splitlines()[-1]


def test_a_signal_to_one_process_stops_both_at_the_same_step(data_dir, tmp_path):  # noqa: F811
  # Process 1 ends 3 s after process 0, whose coordinator must outlive it (else JAX aborts it).
  runs = start(data_dir, tmp_path, free_port(), env={'PROBE_SLOW_CLOSE': '3'})
  runs[1].wait_for('about ')
  runs[1].process.send_signal(signal.SIGTERM)  # only process 1 hears it
  results = [run.finish() for run in runs]
  lines = [last_line(err) for _, _, err in results]
  assert [code for code, _, _ in results] == [75, 75], lines
  where = [re.search(r'stopped at (epoch 1 step \d+ of 80)', line) for line in lines]
  assert all(where) and where[0][1] == where[1][1], lines
  steps = [p.name for p in (tmp_path / 'checkpoints').iterdir()]
  assert len(steps) == 1
  meta = json.loads((tmp_path / 'checkpoints' / steps[0] / 'meta' / 'metadata').read_text())
  assert f"epoch {meta['epoch'] + 1} step {meta['epoch_step']} of 80" == where[0][1]


@pytest.mark.parametrize('present,needle', [
    (0, 'this is process 0'),   # the other process never starts
    (1, 'this is process 1'),   # nobody listens at the coordinator's address
])
def test_a_process_that_never_joins_ends_the_wait_with_one_line(data_dir, tmp_path, present,  # noqa: F811
                                                                needle):
  started = time.monotonic()
  code, out, err = start(data_dir, tmp_path, free_port(), ids=(present,))[0].finish()
  assert time.monotonic() - started < TIMEOUT_S + 15
  assert code == 4 and out == ''
  line = last_line(err)
  assert line.startswith('error: the processes of this run did not all join 127.0.0.1:'), line
  assert f'within {TIMEOUT_S} s (config.distributed.timeout_s)' in line and needle in line
  assert err.endswith(line + '\n')


def test_a_process_that_stops_with_an_error_ends_the_other_with_one_line(data_dir, tmp_path):  # noqa: F811
  port = free_port()
  runs = [*start(data_dir, tmp_path, port, ids=(0,)),
          *start(tmp_path / 'no_such_data', tmp_path, port, ids=(1,))]
  (code0, out0, err0), (code1, out1, err1) = [run.finish() for run in runs]
  assert (code1, out1) == (2, ''), err1[-3000:]
  line = last_line(err1)
  assert line.startswith('error: ') and 'no_such_data' in line and err1.endswith(line + '\n')
  assert (code0, out0) == (4, ''), err0[-3000:]
  line = last_line(err0)
  assert line.startswith('error: process 1 of 2 stopped with an error (see its output); this '
                         'is process 0'), line
  assert err0.endswith(line + '\n')


MARKS = {'PROBE_HOLD': '1000000:/nonexistent'}  # a line at each call of the moment, no hold
HELD_AT = 5  # the step (of the first epoch) at which a process is held, killed or stopped


@contextlib.contextmanager
def running(runs):
  """The runs, each killed at the end if still there: a failing test leaves nothing behind."""
  try:
    yield runs
  finally:
    for run in runs:
      if run.process.poll() is None:
        run.process.kill()
        run.process.wait()


@pytest.mark.parametrize('victim', [1, 0])
def test_a_killed_process_ends_the_other_at_once_with_the_default_timeout(data_dir, tmp_path,  # noqa: F811
                                                                        victim):
  """The kernel closes a killed process's connections: no wait for config.distributed.timeout_s
  (120 s by default)."""
  runs = pair(data_dir, tmp_path, victim, {'PROBE_HOLD': f'{HELD_AT}:{tmp_path / "never"}'},
              **{'distributed.timeout_s': 120})
  with running(runs):
    for run in runs:
      run.wait_for(f'PROBE step {HELD_AT} pid=')  # the survivor then waits in that step
    runs[victim].process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code, out, err = runs[1 - victim].finish(timeout=60)
    took = time.monotonic() - killed
  assert code == 4 and out == '', err[-3000:]
  line = last_line(err)
  role = ' (the coordinator)' if victim == 0 else ''
  assert line.startswith(f'error: process {victim} of 2{role} ended without a word (its '
                         f'connection closed: killed, or crashed); this is process '
                         f'{1 - victim}'), line
  assert err.endswith(line + '\n') and 'Check failure' not in err
  assert took < 10, took


def pair(data_dir, workdir, victim, env, **extra):
  """Two processes at the moment 'step' (a line at each call); `env` for `victim` only."""
  return [start(data_dir, workdir, port, ids=(i,), moment='step',
                env={**MARKS, **env} if i == victim else MARKS, **extra)[0]
          for port in [free_port()] for i in (0, 1)]


def test_a_stopped_process_is_named_after_the_timeout(data_dir, tmp_path):  # noqa: F811
  """SIGSTOP keeps its connections open: alive but silent, only the heartbeat's timeout names
  it (config.distributed.timeout_s)."""
  runs = pair(data_dir, tmp_path, 1, {'PROBE_HOLD': f'{HELD_AT}:{tmp_path / "never"}'})
  with running(runs):
    for run in runs:
      run.wait_for(f'PROBE step {HELD_AT} pid=')
    runs[1].process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    code, out, err = runs[0].finish(timeout=TIMEOUT_S + 30)
    took = time.monotonic() - stopped
  assert code == 4 and out == '', err[-3000:]
  line = last_line(err)
  assert line.startswith(f'error: process 1 of 2 stopped answering (no sign of life for '
                         f'{TIMEOUT_S} s); this is process 0'), line
  assert err.endswith(line + '\n')
  assert TIMEOUT_S - 2 <= took < TIMEOUT_S + 15, took  # its last beat came up to 2 s before


def test_a_bug_in_one_process_shows_its_traceback_at_once(data_dir, tmp_path):  # noqa: F811
  """An exception that is no peer's doing waits for nothing (timeout_s 120 s, the default); the
  other process stops with one line naming the one that failed."""
  runs = pair(data_dir, tmp_path, 1, {'PROBE_BUG': f'{HELD_AT}:1'},
              **{'distributed.timeout_s': 120})
  with running(runs):
    runs[1].wait_for(f'PROBE step {HELD_AT} pid=')  # raises right after this line
    raised = time.monotonic()
    code, out, err = runs[1].finish(timeout=60)
    took = time.monotonic() - raised
    code0, out0, err0 = runs[0].finish(timeout=60)
  assert code == 1 and out == '', err[-3000:]
  assert 'Traceback (most recent call last)' in err
  assert err.splitlines()[-1] == 'RuntimeError: PROBE_BUG: a bug in process 1', err[-3000:]
  assert took < 10, took
  assert (code0, out0) == (4, ''), err0[-3000:]
  line = last_line(err0)
  assert line.startswith('error: process 1 of 2 stopped with an error (see its output); this '
                         'is process 0'), line


BUSY_PEER = '''
import sys, time
from ml_collections import ConfigDict
from flax_seresnet import parallel
port, me = sys.argv[1:]
parallel.initialize_distributed(ConfigDict(dict(
    initialize='yes', coordinator_address=f'127.0.0.1:{port}', num_processes=2,
    process_id=int(me), timeout_s=120)))
parallel.PeerWatch(120)
print('watching', file=sys.stderr, flush=True)
while True:  # Python work: the GIL is rarely free, as when a run prepares its batches
  sum(i * i for i in range(10 ** 6))
'''


def test_process_0_killed_while_the_other_computes_is_named_before_jax_aborts(tmp_path):
  """JAX's client learns of the coordinator's end as soon as the watch does, and aborts with a C++
  trace: the relay keeps that news from it, however busy the process."""
  port = free_port()
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=1')}
  runs = [Run([], command=[sys.executable, '-c', BUSY_PEER, str(port), str(i)], env=env)
          for i in (0, 1)]
  with running(runs):
    for run in runs:
      run.wait_for('watching')
    runs[0].process.send_signal(signal.SIGKILL)
    code, _, err = runs[1].finish(timeout=60)
  assert code == 4, err[-3000:]
  line = last_line(err)
  assert line.startswith('error: process 0 of 2 (the coordinator) ended without a word'), line
  assert err.endswith(line + '\n') and 'coordination service' not in err, err[-3000:]
