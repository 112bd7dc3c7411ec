"""Several processes on 127.0.0.1: a signal to one of them stops all at the same step; a process
killed mid-run, one that never starts and an unreachable coordinator end the others with one
line naming what is missing (exit 4), within the configured wait."""
import json
import os
import re
import signal
import socket
import time

import pytest

from tests.harness import Run, flags

TIMEOUT_S = 5


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(data_dir, workdir, port, ids=(0, 1), env=None, **extra):
  env = {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace('device_count=8', 'device_count=1'),
         **(env or {})}
  settings = {'num_devices': 0, 'distributed.coordinator_address': f'127.0.0.1:{port}',
              'distributed.num_processes': 2, 'distributed.timeout_s': TIMEOUT_S, **extra}
  runs = []
  for i in ids:
    args = [*flags(data_dir, workdir), *[f'--config.{k}={v}' for k, v in settings.items()],
            f'--config.distributed.process_id={i}']
    runs.append(Run([a for a in args if a != '--config.num_devices=1'], env=env))
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


def test_a_killed_process_ends_the_other_with_one_line_naming_it(data_dir, tmp_path):  # noqa: F811
  runs = start(data_dir, tmp_path, free_port())
  runs[0].wait_for('about ')
  runs[1].process.send_signal(signal.SIGKILL)
  killed = time.monotonic()
  code, out, err = runs[0].finish()
  assert time.monotonic() - killed < TIMEOUT_S + 15
  assert code == 4 and out == '', err[-3000:]
  line = last_line(err)
  assert line.startswith(f'error: process 1 of 2 stopped answering (no sign of life for '
                         f'{TIMEOUT_S} s); this is process 0'), line
  assert err.endswith(line + '\n')


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
