"""Files and disks as the operating system presents them: a real full file system and a read-only
one (in a private mount namespace), special files (FIFOs, devices) as inputs and outputs,
folders and links where files should be, and the files of a run itself."""
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from flax_seresnet import inference, train
from flax_seresnet.errors import UserError
from input_pipeline import DataError, load_cifar10, load_unlabeled
from tests import fake_data
from tests.harness import (Run, TINY, assert_log_then_one_error, fill, flags, needs_mounts,
                           run_cli)
from tests.train_helpers import REPO, tiny_config


@needs_mounts
def test_a_full_disk_in_a_save_is_one_line_keeps_what_was_saved_and_resumes_exactly(
    data_dir, uninterrupted, tmp_path):  # noqa: F811
  disk, control = tmp_path / 'disk', tmp_path / 'control'
  disk.mkdir()
  control.mkdir()
  probe = f'{sys.executable} {REPO / "tests" / "cli_probe.py"}'
  args = ' '.join(f"'{a}'" for a in flags(data_dir, disk / 'run'))
  # All in one private mount namespace: the tmpfs lives as long as its processes do.
  script = (f'mount -t tmpfs -o size=8m tmpfs {disk} && {probe} save {args}; '
            f'echo $? > {control}/rc1; while [ ! -e {control}/full ]; do sleep 0.1; done; '
            f'{probe} none {args} > {control}/out_full 2> {control}/err_full; '
            f'echo $? > {control}/rc_full; while [ ! -e {control}/go ]; do sleep 0.1; done; '
            f'{probe} none {args} > {control}/out2 2> {control}/err2; echo $? > {control}/rc2; '
            f'ls -A {disk}/run/checkpoints > {control}/listing')
  run = Run([], command=['unshare', '-m', '--propagation', 'private', 'sh', '-c', script],
            env={'PROBE_HOLD': f'2:{control}/filled'})
  run.wait_for('PROBE save', times=2)  # epoch 1 is saved; epoch 2's save is held
  fill(f'/proc/{run.process.pid}/root{disk}/filler')  # the namespace's view of the tmpfs
  (control / 'filled').write_text('')  # the save goes on, onto a full disk
  while not (control / 'rc1').exists():
    time.sleep(0.1)
  err = ''.join(run.lines)
  assert (control / 'rc1').read_text() == '2\n' and 'Traceback' not in err, err[-3000:]
  last = err.splitlines()[-1]
  assert last.startswith('error: could not write the checkpoint of step 160 ') and (
      '(No space left on device)' in last and 'steps [80]' in last), last
  (control / 'full').write_text('')  # a resume on the full disk: one line too
  while not (control / 'rc_full').exists():
    time.sleep(0.1)
  full = (control / 'err_full').read_text()
  assert (control / 'rc_full').read_text() == '2\n' and 'Traceback' not in full, full[-3000:]
  assert full.splitlines()[-1].startswith('error: ') and 'No space left on device' in full
  with contextlib.suppress(FileNotFoundError):  # free the space, then resume
    os.remove(f'/proc/{run.process.pid}/root{disk}/filler')
  (control / 'go').write_text('')
  run.process.wait(300)
  assert (control / 'rc2').read_text() == '0\n', (control / 'err2').read_text()[-3000:]
  assert (control / 'listing').read_text().split() == ['160', '80']  # nothing half-written
  # As the uninterrupted run (the tmpfs went with the namespace: its summary line says it).
  expected = json.loads((uninterrupted / 'metrics.jsonl').read_text().splitlines()[-1])
  assert f"final_test_accuracy={expected['test_accuracy']:.2f} " in (control / 'out2').read_text()


def in_namespace(setup: str, *args, timeout=120):
  """main.py inside a private mount namespace after the shell commands `setup`."""
  command = ' '.join([sys.executable, str(REPO / 'main.py'), *[f"'{a}'" for a in args]])
  result = subprocess.run(['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                           f'{setup} && {command}'], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'})
  return result


@pytest.fixture(scope='module')
def trained(learnable_cifar10_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=1), str(workdir))
  hidden = workdir.parent / 'hidden.pkl'
  fake_data.write_pickle(hidden, {'data': fake_data.make_batch(9, 3)['data'], 'ids': list(range(9))})
  return workdir, hidden


def predict_args(trained, output):
  workdir, hidden = trained
  return [*TINY, f'--workdir={workdir}', '--mode=predict', f'--input={hidden}',
          f'--output={output}']


@needs_mounts
@pytest.mark.parametrize('setup,target,needle', [
    ('mount -t tmpfs -o size=4k tmpfs {d} && dd if=/dev/zero of={d}/filler bs=4k count=1 '
     '2>/dev/null; true', '{d}/pred.csv', '(No space left on device)'),
    ('mount -o bind,ro {d} {d}', '{d}/pred.csv', '(Read-only file system)'),
])
def test_predict_onto_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    trained, tmp_path, setup, target, needle):
  folder = tmp_path / 'out'
  folder.mkdir()
  output = target.format(d=folder)
  result = in_namespace(setup.format(d=folder), *predict_args(trained, output))
  assert_log_then_one_error(result, 2, f'could not write --output {output} {needle}')
  assert list(folder.iterdir()) == []  # (outside the namespace: the folder underneath)


@needs_mounts
def test_training_into_a_read_only_workdir_is_one_line(learnable_cifar10_dir, tmp_path):
  result = in_namespace(f'mount -o bind,ro {tmp_path} {tmp_path}', *TINY,
                        f'--config.data_dir={learnable_cifar10_dir}', f'--workdir={tmp_path}/run')
  assert_log_then_one_error(result, 2, 'Read-only file system')


def special_targets(tmp_path):
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  device = tmp_path / 'full'  # /dev/full's numbers, in a folder of the test's own
  os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))
  (tmp_path / 'folder').mkdir()
  return {'fifo': fifo, 'device': device, 'folder': tmp_path / 'folder'}


@pytest.mark.skipif(os.geteuid() != 0, reason='mknod needs root')
def test_predict_refuses_every_target_that_is_not_a_regular_file(trained, tmp_path):
  targets = special_targets(tmp_path)
  workdir, hidden = trained
  for name, path in [*targets.items(), ('input', hidden), ('run file', workdir / 'metrics.jsonl'),
                     ('checkpoint', workdir / 'checkpoints' / '5' / 'meta')]:
    kinds = {p: os.lstat(p).st_mode for p in targets.values()}
    with pytest.raises(UserError, match='--output') as raised:
      inference.predict(tiny_config(), str(hidden), str(path), str(workdir))
    assert '\n' not in str(raised.value), name
    assert {p: os.lstat(p).st_mode for p in targets.values()} == kinds  # none replaced
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      p.name for p in targets.values())  # no temporary left


def test_a_planted_link_at_the_old_temporary_name_redirects_nothing(trained, tmp_path):
  workdir, hidden = trained
  victim = tmp_path / 'victim'
  victim.write_text('keep me')
  (tmp_path / 'pred.csv.tmp').symlink_to(victim)
  inference.predict(tiny_config(), str(hidden), str(tmp_path / 'pred.csv'), str(workdir))
  assert victim.read_text() == 'keep me'
  assert (tmp_path / 'pred.csv').read_text().startswith('ID,Labels\n')


def test_predict_onto_stdout_or_under_proc_is_one_line(trained, tmp_path):
  (tmp_path / 'stdout').symlink_to('/proc/self/fd/1')  # as /dev/stdout: here, a pipe
  result = run_cli(*predict_args(trained, tmp_path / 'stdout'))
  assert_log_then_one_error(result, 2, 'is not a regular file')
  assert (tmp_path / 'stdout').is_symlink()
  result = run_cli(*predict_args(trained, '/proc/self/pred.csv'))
  assert_log_then_one_error(result, 2, 'could not write --output /proc/self/pred.csv')


@pytest.mark.parametrize('kind', ['fifo', 'device', 'zero link', 'folder'])
def test_special_files_as_inputs_are_refused_at_once(trained, learnable_cifar10_dir, tmp_path,
                                                     kind):
  path = tmp_path / 'input'
  if kind == 'fifo':
    os.mkfifo(path)
  elif kind == 'device':
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
  elif kind == 'zero link':
    path.symlink_to('/dev/zero')
  else:
    path.mkdir()
  needle = 'is a folder' if kind == 'folder' else 'is not a regular file'
  started = time.monotonic()
  with pytest.raises(DataError, match=needle):  # a hidden set ...
    load_unlabeled(path)
  data = tmp_path / 'data'
  shutil.copytree(learnable_cifar10_dir, data)
  (data / 'data_batch_2').unlink()
  os.rename(path, data / 'data_batch_2')
  with pytest.raises(DataError, match=needle):  # ... and a dataset batch
    load_cifar10(data)
  assert time.monotonic() - started < 5  # no wait on a FIFO, no endless read of /dev/zero


def test_a_fifo_as_input_through_the_command_line(trained, tmp_path):
  os.mkfifo(tmp_path / 'fifo')
  result = run_cli(*predict_args(trained, tmp_path / 'p.csv')[:-2], f'--input={tmp_path}/fifo',
                   f'--output={tmp_path}/p.csv', timeout=60)
  assert_log_then_one_error(result, 2, 'is not a regular file (a FIFO, a device or a socket)')


@pytest.mark.parametrize('damage', ['link', 'folder'])
def test_a_lock_that_is_a_link_or_a_folder_is_refused_and_never_followed(learnable_cifar10_dir,
                                                                         tmp_path, damage):
  victim = tmp_path / 'victim'
  victim.write_text('keep me')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  if damage == 'link':
    (workdir / '.lock').symlink_to(victim)
  else:
    (workdir / '.lock').mkdir()
  with pytest.raises(UserError, match=r'\.lock (is a link|is not a regular file|cannot be)'):
    train.train_and_evaluate(tiny_config(learnable_cifar10_dir), str(workdir))
  assert victim.read_text() == 'keep me'


def test_checkpoints_as_a_file_is_refused_before_any_training(learnable_cifar10_dir, tmp_path):
  (tmp_path / 'checkpoints').write_text('not a folder')
  result = run_cli(*TINY, f'--config.data_dir={learnable_cifar10_dir}', f'--workdir={tmp_path}')
  assert_log_then_one_error(result, 2, 'checkpoints is a file, not a folder')
  assert not any('training on' in line for line in result.stderr.splitlines())


@pytest.mark.parametrize('damage', ['bytes', 'cut', 'deleted', 'truncated', 'foreign'])
def test_a_damaged_metrics_file_is_rebuilt_from_the_checkpoint(trained, learnable_cifar10_dir,
                                                              tmp_path, damage):
  workdir = pathlib_copy(trained[0], tmp_path / 'run')
  path, good = workdir / 'metrics.jsonl', (workdir / 'metrics.jsonl').read_text()
  damaged = {'bytes': b'\xff\xfe{"epoch": \x80}\n', 'cut': good.encode()[:-7],
             'truncated': b'', 'foreign': b'{"epoch": 1, "train_loss": 9}\n' * 3}
  if damage == 'deleted':
    path.unlink()
  else:
    path.write_bytes(damaged[damage])
  train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=2), str(workdir))
  lines = path.read_text().splitlines()
  assert lines[0] == good.splitlines()[0] and len(lines) == 2  # epoch 1 rebuilt, epoch 2 added
  assert [json.loads(line)['epoch'] for line in lines] == [1, 2]


def test_a_folder_in_place_of_the_metrics_file_is_one_line(trained, learnable_cifar10_dir,
                                                           tmp_path):
  workdir = pathlib_copy(trained[0], tmp_path / 'run')
  (workdir / 'metrics.jsonl').unlink()
  (workdir / 'metrics.jsonl').mkdir()
  with pytest.raises(UserError, match='metrics.jsonl is not a regular file') as raised:
    train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=2), str(workdir))
  assert '\n' not in str(raised.value)


def pathlib_copy(source, target):
  shutil.copytree(source, target)
  return target


@pytest.mark.parametrize('overrides,needle', [
    ({'data_dir': '/tmp/' + 'x' * 300}, 'cannot be used (File name too long)'),
    ({'test_subset': 0, 'data_dir': 'EMPTY'}, 'holds no images'),
])
def test_settings_the_validator_passes_but_the_system_refuses_are_one_line(
    learnable_cifar10_dir, tmp_path, overrides, needle):
  if overrides.get('data_dir') == 'EMPTY':  # a well-formed but empty test_batch
    data = pathlib_copy(learnable_cifar10_dir, tmp_path / 'data')
    fake_data.write_pickle(data / 'test_batch', {'data': np.zeros((0, 3072), np.uint8),
                                                 'labels': []})
    overrides = dict(overrides, data_dir=str(data))
  with pytest.raises(DataError, match=needle.replace('(', r'\(').replace(')', r'\)')) as raised:
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / 'run'))
  assert '\n' not in str(raised.value)


def test_a_huge_eval_batch_is_cut_to_what_the_test_set_needs(trained, learnable_cifar10_dir):
  config = tiny_config(learnable_cifar10_dir, eval_batch_size=1_000_000)
  started = time.monotonic()
  assert inference.evaluate(config, str(trained[0]))['accuracy'] >= 0
  assert time.monotonic() - started < 60


def test_predict_output_equal_to_the_input_is_refused(trained):
  with pytest.raises(UserError, match='is also the input'):
    inference.predict(tiny_config(), str(trained[1]), str(trained[1]), str(trained[0]))
