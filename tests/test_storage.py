"""Storage that refuses a write, met by every mode in a real subprocess: a file-size limit, an
open-files limit, a full disk, a read-only mount and a path under a regular file each end in
exit 2 and one `error:` line with that cause's advice, and nothing else: no traceback and no
report of orbax's, asyncio's or any other thread's (they see the same failure first)."""
import errno
import os
import resource
import shlex
import shutil
import subprocess
import sys

import pytest

from flax_seresnet import storage
from flax_seresnet.errors import UserError
from tests.harness import TINY, Run, assert_log_then_one_error, needs_mounts, run_cli
from tests.train_helpers import REPO

FAULTS = {  # fault: (its setup in the namespace, with {d} the folder it hits; the advice)
    # (not in the session's compilation cache: JAX would leave truncated entries there)
    'file size': ('export JAX_ENABLE_COMPILATION_CACHE=false && ulimit -f 16',
                  'raise the file-size limit (ulimit -f)'),
    'open files': ('ulimit -n 20', 'raise the open-files limit (ulimit -n)'),
    'full disk': ('FULL', 'free some space'),
    'read-only': ('mount -o bind,ro {d} {d}', 'the folder is read-only: choose another'),
    'under a file': ('true', 'a file, not a folder'),
}
# What the other threads said before: none of it may reach the terminal.
OTHER_REPORTS = ('Traceback', 'raised an exception', 'Exception ignored', 'Exception in thread',
                 'Task exception', 'never awaited', 'OUT_OF_RANGE', 'RESOURCE_EXHAUSTED')


@pytest.fixture(scope='module')
def trained(learnable_cifar10_dir, tmp_path_factory):
  """A run of one epoch through the command line (a resume takes the same flags)."""
  workdir = tmp_path_factory.mktemp('storage') / 'run'
  result = run_cli(*TINY, f'--config.data_dir={learnable_cifar10_dir}', '--config.num_epochs=1',
                   f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def full_disk(d: str, keep: str) -> str:
  """A small tmpfs at `d`, holding `keep` (a copy of a run, or nothing), then filled up: a
  run's first writes fail, or (when there is room for those) its checkpoint's arrays."""
  fill = (f'cp -a {keep} {d}/run && dd if=/dev/zero of={d}/filler bs=1k 2>/dev/null; true'
          if keep else 'true')
  return f'mount -t tmpfs -o size={"2m" if keep else "32k"} tmpfs {d} && {fill}'


def in_namespace(setup: str, args, pythonpath=str(REPO), timeout=180):
  """main.py after the shell commands `setup` (mounts, limits) in a private mount namespace."""
  command = shlex.join([sys.executable, str(REPO / 'main.py'), *map(str, args)])
  return subprocess.run(['unshare', '-m', '--propagation', 'private', 'bash', '-c',
                         f'{setup} && exec {command}'], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout,
                        env={**os.environ, 'PYTHONPATH': pythonpath, 'JAX_PLATFORMS': 'cpu'})


def arrange(mode, fault, d, trained, data):
  """(the shell setup, main.py's flags) of one case; `d` is the folder the fault hits."""
  setup = FAULTS[fault][0].format(d=d)
  common = [*TINY, f'--config.data_dir={data}']
  where = f'{d}/file/x' if fault == 'under a file' else f'{d}/run'
  if fault == 'under a file':
    (d / 'file').write_text('a file')
  if mode == 'resume':  # a copy of the run of one epoch, to be continued for a second
    if fault == 'under a file':  # its events folder is a file
      where = f'{d}/run'
      shutil.copytree(trained, where)
      shutil.rmtree(f'{where}/tensorboard', ignore_errors=True)
      (d / 'run' / 'tensorboard').write_text('a file')
    elif fault != 'full disk':
      shutil.copytree(trained, where)
  if fault == 'full disk':
    setup = full_disk(d, trained if mode == 'resume' else '')
  if mode == 'resume' and fault == 'file size':  # no room for the lock's few bytes: at once
    setup = setup.replace('ulimit -f 16', 'ulimit -f 0')
  if mode == 'export':
    output = f'{d}/file/x' if fault == 'under a file' else f'{d}/model'
    return setup, [*common, f'--workdir={trained}', '--mode=export', f'--output={output}']
  return setup, [*common, '--config.num_epochs=' + ('2' if mode == 'resume' else '1'),
                 f'--workdir={where}']


def out_of_files_while_exporting(args, pythonpath, tmp_path):
  """An export needs few files open (it passes `ulimit -n 10`): held at its first file, its
  limit falls to the files it holds."""
  run = Run(args, 'export', env={'PROBE_HOLD': f'1:{tmp_path}/go', 'PYTHONPATH': pythonpath})
  run.wait_for('PROBE export')
  pid = int(run.lines[-1].split('pid=')[1])
  held = len(os.listdir(f'/proc/{pid}/fd'))
  resource.prlimit(pid, resource.RLIMIT_NOFILE, (held, held))
  (tmp_path / 'go').write_text('')
  code, out, err = run.finish()
  err = ''.join(line for line in err.splitlines(True) if not line.startswith('PROBE '))
  return subprocess.CompletedProcess(args, code, out, err)


@needs_mounts
@pytest.mark.parametrize('fault', FAULTS)
@pytest.mark.parametrize('mode', ['train', 'resume', 'export'])
def test_a_storage_fault_is_one_line_with_its_advice(
    trained, learnable_cifar10_dir, no_torch, tmp_path, mode, fault):  # noqa: F811
  d = tmp_path / 'disk'
  d.mkdir()
  setup, args = arrange(mode, fault, d, trained, learnable_cifar10_dir)
  if mode == 'export' and fault == 'open files':
    result = out_of_files_while_exporting(args, no_torch, tmp_path)
  else:  # an export without torch (no ONNX): its writes are the same, seconds sooner
    result = in_namespace(setup, args, no_torch if mode == 'export' else str(REPO))
  assert_log_then_one_error(result, 2, FAULTS[fault][1])
  for report in OTHER_REPORTS:
    assert report not in result.stdout + result.stderr, (report, result.stderr[-3000:])


def test_damaged_checkpoints_as_a_file_is_one_line(trained, learnable_cifar10_dir, tmp_path):
  workdir = shutil.copytree(trained, tmp_path / 'run')
  step, = os.listdir(workdir / 'checkpoints')
  (workdir / 'checkpoints' / step / 'meta' / 'metadata').write_text('{"damaged": 1}')
  (workdir / 'damaged_checkpoints').write_text('a file')
  result = run_cli(*TINY, f'--config.data_dir={learnable_cifar10_dir}', '--config.num_epochs=2',
                   f'--workdir={workdir}')
  assert_log_then_one_error(result, 2, f'could not move the damaged checkpoint {workdir}/'
                            f'checkpoints/{step} to {workdir}/damaged_checkpoints/')
  assert 'a file, not a folder' in result.stderr and (workdir / 'checkpoints' / step).is_dir()


def test_export_under_proc_is_one_line(trained, learnable_cifar10_dir):
  result = run_cli(*TINY, f'--config.data_dir={learnable_cifar10_dir}', f'--workdir={trained}',
                   '--mode=export', '--output=/proc/self/model')
  assert_log_then_one_error(result, 2, 'could not write the export /proc/self/model (')


@pytest.mark.parametrize('wrapped,advice', [
    (OSError(errno.EDQUOT, 'Disk quota exceeded'), 'raise the disk quota'),
    (ValueError("OUT_OF_RANGE: Failed writing: File too large [os_error_code='27']"), 'ulimit -f'),
    (ValueError('RESOURCE_EXHAUSTED: Error writing "x/0": Failed writing'), 'free some space'),
    (ValueError('OUT_OF_RANGE: Error writing "x/0"'), 'ulimit -f'),
    (RuntimeError('Too many open files'), 'ulimit -n'),
    (ExceptionGroup('tasks', [ValueError('[Errno 30] Read-only file system: x')]), 'read-only'),
    (OSError(errno.ENFILE, 'Too many open files in system'), 'close some programs'),
])
def test_the_classifier_reads_the_wrapped_forms(wrapped, advice):
  outer = RuntimeError('the save failed')
  outer.__cause__ = wrapped
  assert advice in storage.describe(outer)
  for other in ('the checkpoint is damaged', 'RESOURCE_EXHAUSTED: Out of memory allocating',
                'OUT_OF_RANGE: Error reading local file "x": past the end'):
    assert storage.problem(ValueError(other)) is None


def test_a_checkpoint_the_reader_cannot_open_now_is_not_moved_aside_as_damaged(trained, tmp_path,
                                                                               monkeypatch):
  """Too many open files while restoring is the reader's limit, not damage: one line, and the
  save stays where it is (a limit at the start does not reach a restore: it needs few files)."""
  from flax_seresnet import checkpointing
  workdir = shutil.copytree(trained, tmp_path / 'run')
  steps = sorted(os.listdir(workdir / 'checkpoints'))

  def out_of_files(*args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Error opening \"zarr\" driver: Failed to open "
                     "directory: \"x/d\": Too many open files [os_error_code='24']")
  with checkpointing.Checkpoints(str(workdir)) as checkpoints:
    manager = checkpoints._manager  # pylint: disable=protected-access
    monkeypatch.setattr(manager, 'restore', out_of_files)
    with pytest.raises(UserError, match=r'could not read the checkpoint .* \(Too many open files\)'
                       r': raise the open-files limit \(ulimit -n\)'):
      checkpoints.restore({})
  assert sorted(os.listdir(workdir / 'checkpoints')) == steps
  assert not (workdir / 'damaged_checkpoints').exists()
