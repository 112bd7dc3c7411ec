"""What the tests share: the repository, the tiny command line and its checks, a subprocess
read as it runs (held at named points by tests/cli_probe.py), private mounts and full disks.
Fixtures live in conftest.py; test modules import helpers from here, never from each other."""
import errno
import hashlib
import http.server
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from configs import smoke
from tests.train_helpers import REPO

# A log line (its time first), or a signal's acknowledgement (streams.say, from the watcher).
LOG_LINE = re.compile(
    r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (warning: )?\S|SIG[A-Z]+ received: stopping )')
# The tiny network of tests/train_helpers.py, through the smoke config (its compilations are
# cached across the session).
TINY = ['--config', 'configs/smoke.py', '--config.model.widths=(8,16,16)',
        '--config.batch_size=64', '--config.train_subset=0', '--config.eval_batch_size=64',
        '--config.num_devices=1']


def run_cli(*args, timeout=300, env=None, cwd=REPO):
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu', **(env or {})}
  return subprocess.run([sys.executable, str(REPO / 'main.py'), *map(str, args)],
                        capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def assert_log_then_one_error(result, code: int, needle: str, prefix: str = 'error: '):
  """stdout empty; stderr: log lines (each with its time), then one error line, then nothing."""
  assert result.returncode == code, (result.returncode, result.stderr[-3000:])
  assert result.stdout == ''
  lines = result.stderr.splitlines()
  assert result.stderr.endswith('\n') and lines[-1].startswith(prefix), result.stderr[-3000:]
  assert needle in lines[-1], lines[-1]
  assert all(LOG_LINE.match(line) for line in lines[:-1]), result.stderr[-3000:]
  assert 'Traceback' not in result.stderr


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


class Run:
  """main.py (through tests/cli_probe.py) in a subprocess whose stderr is read as it comes;
  `hold=N` holds the N-th call of `moment` until `release()`."""

  def __init__(self, args, moment='none', env=None, command=None, hold=0, control=None):
    self.lines, self.seen = [], threading.Condition()
    self.release_path = f'{control or tempfile.mkdtemp()}/release'
    env = {**({'PROBE_HOLD': f'{hold}:{self.release_path}'} if hold else {}), **(env or {})}
    self.process = subprocess.Popen(
        command or [sys.executable, str(REPO / 'tests' / 'cli_probe.py'), moment, *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu', **env})
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.process.stderr:
      with self.seen:
        self.lines.append(line)
        self.seen.notify_all()

  def wait_for(self, text, timeout=300, times=1):
    """Until `times` lines of stderr hold `text` (a whole line when it ends with a newline)."""
    deadline = time.monotonic() + timeout
    match = (lambda line: line == text) if text.endswith('\n') else (lambda line: text in line)
    with self.seen:
      while sum(map(match, self.lines)) < times:
        assert self.process.poll() is None, ''.join(self.lines)[-3000:]
        assert self.seen.wait(deadline - time.monotonic()), (text, ''.join(self.lines))

  def release(self):
    pathlib.Path(self.release_path).write_text('')

  def finish(self, timeout=300):
    self.process.wait(timeout)
    self.reader.join(timeout)  # stderr read to its end
    return self.process.returncode, self.process.stdout.read(), ''.join(self.lines)


def can_mount() -> bool:
  probe = subprocess.run(['unshare', '-m', '--propagation', 'private', 'true'],
                         capture_output=True)
  return shutil.which('unshare') and probe.returncode == 0


needs_mounts = pytest.mark.skipif(not can_mount(), reason='needs root for unshare -m')


def fill(path):
  """Writes into `path` until its file system is full (it may be full already: then even the
  file cannot be made, and there is nothing to do)."""
  try:
    with open(path, 'wb') as f:
      while True:
        f.write(b'\0' * (1 << 16))
        f.flush()
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise


class Handler(http.server.BaseHTTPRequestHandler):
  """Serves self.server.routes: path -> (body, mode)."""

  def do_GET(self):  # pylint: disable=invalid-name
    route = self.server.routes.get(self.path)
    if route is None:
      self.send_error(404)
      return
    body, mode = route
    self.send_response(200)
    self.send_header('Content-Type', 'application/gzip')
    if mode == 'short':  # promise more than is sent, then hang up
      self.send_header('Content-Length', str(len(body) + 100_000))
    elif mode != 'no-length':
      self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body if mode != 'half' else body[:len(body) // 2])
    self.wfile.flush()
    self.close_connection = True

  def log_message(self, *args):  # keep the test output quiet
    pass


def serve(server, name: str, body: bytes, mode: str = 'ok') -> tuple[str, str]:
  """Publishes body at /name; returns (url, md5)."""
  server.routes[f'/{name}'] = (body, mode)
  return f'http://127.0.0.1:{server.server_address[1]}/{name}', hashlib.md5(body).hexdigest()
