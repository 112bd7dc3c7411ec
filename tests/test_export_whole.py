"""An export folder is replaced whole or not at all: for every fault (a full disk from the start
or midway, a kill or a signal while its files are written, a folder where a file of it should be,
a read-only mount, no torch), with and without an older export of another model there, the
folder afterwards holds the complete new export or is exactly as it was, and nothing is left
beside it; the command says so in one last line, without a traceback."""
import errno
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys

import pytest

from flax_seresnet import export, train
from flax_seresnet.errors import UserError
from tests.harness import LOG_LINE, TINY, Run, fill, needs_mounts
from tests.train_helpers import REPO, tiny_config

NO_SPACE = 'could not write the export {target} (No space left on device): free some space;'
CASES = {  # fault: (the shell setup with {d}: where the export goes, {stage}: the folder's
    #                 content before; the held write and what the test does there; the outcome)
    'none': ('cp -a {stage} {d}/out', None, None, 'new'),
    'no torch': ('cp -a {stage} {d}/out', None, None, 'new'),
    'full from the start': ('mount -t tmpfs -o size=1m tmpfs {d} && cp -a {stage} {d}/out && '
                            'dd if=/dev/zero of={d}/filler bs=1k 2>/dev/null; true',
                            None, None, NO_SPACE),
    'full midway': ('mount -t tmpfs -o size=1m tmpfs {d} && cp -a {stage} {d}/out', 2, 'fill',
                    NO_SPACE),
    'SIGKILL': ('cp -a {stage} {d}/out', 2, signal.SIGKILL, 'killed'),
    'SIGTERM': ('cp -a {stage} {d}/out', 2, signal.SIGTERM,
                'interrupted: SIGTERM received: stopped the export; {target} is as it was.'),
    'a folder model.onnx': ('cp -a {stage} {d}/out', None, None,
                            "error: --output {target} holds 'model.onnx', which is not a file"),
    'read-only': ('cp -a {stage} {d}/out && mount -o bind,ro {d}/out {d}/out', None, None,
                  'could not write the export {target} (Read-only file system): the folder is '
                  'read-only: choose another;'),
}


@pytest.fixture(scope='module')
def models(learnable_cifar10_dir, tmp_path_factory):
  """A run to export, and an older export of another model (a torch network, another source)."""
  root = tmp_path_factory.mktemp('whole')
  train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=1), str(root / 'run'))
  torch = pytest.importorskip('torch')
  from flax_seresnet.reference import TorchSEResNet
  torch.manual_seed(1)
  net = TorchSEResNet(stage_blocks=(1, 1, 1), widths=(8, 16, 16))
  torch.save({'net': {f'module.{k}': v for k, v in net.state_dict().items()}},
             root / 'other.pth')
  export.export(tiny_config(), str(root / 'older'), torch_checkpoint=str(root / 'other.pth'))
  return root


def contents(folder) -> dict:
  """Every path under `folder` with its bytes (None for a folder)."""
  found = {}
  for path, folders, names in os.walk(folder):
    for name in folders + names:
      full = os.path.join(path, name)
      found[os.path.relpath(full, folder)] = None if os.path.isdir(full) else open(full,
                                                                                  'rb').read()
  return found


def assert_complete_export(folder, source: str, names=('model.jax', 'model.json', 'model.onnx')):
  assert sorted(os.listdir(folder)) == sorted(names)
  card = json.loads((folder / 'model.json').read_text())
  assert source in card['source']
  for name in names[:1] + names[2:]:
    assert card['files'][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
  export.load(str(folder))


def run_case(models, tmp_path, fault, older, pythonpath):
  """The export in a private mount namespace; its rc, stdout, stderr and the folder after it."""
  setup, held, act, _ = CASES[fault]
  d, stage, control = tmp_path / 'disk', tmp_path / 'stage', tmp_path / 'control'
  for folder in (d, stage, control):
    folder.mkdir()
  if older:
    shutil.copytree(models / 'older', stage / 'model')
  if fault == 'a folder model.onnx':
    (stage / 'model').mkdir(exist_ok=True)
    if older:
      (stage / 'model' / 'model.onnx').unlink()
    (stage / 'model' / 'model.onnx').mkdir()
    (stage / 'model' / 'model.onnx' / 'keep').write_text('keep me')
  probe = shlex.join([sys.executable, str(REPO / 'tests' / 'cli_probe.py'), 'export', *TINY,
                      f'--workdir={models / "run"}', '--mode=export', f'--output={d}/out/model'])
  script = (f'{setup.format(d=d, stage=stage)} && {{ {probe}; echo $? > {control}/rc; }}; '
            f'cp -a {d}/out {control}/after')
  env = {'PROBE_HOLD': f'{held or 0}:{control}/go'}
  if fault != 'none':  # torch adds the ONNX model (the case 'none'), nothing else
    env['PYTHONPATH'] = pythonpath
  run = Run([], command=['unshare', '-m', '--propagation', 'private', 'bash', '-c', script],
            env=env)
  if held:
    run.wait_for('PROBE export', times=held)
    pid = int(run.lines[-1].split('pid=')[1])
    if act == 'fill':
      fill(f'/proc/{pid}/root{d}/filler')
    else:
      os.kill(pid, act)
    (control / 'go').write_text('')
  _, out, err = run.finish(300)
  err = ''.join(line for line in err.splitlines(True) if not line.startswith('PROBE '))
  return int((control / 'rc').read_text()), out, err, contents(stage), control / 'after'


@needs_mounts
@pytest.mark.parametrize('older', [True, False], ids=['over an older export', 'new'])
@pytest.mark.parametrize('fault', CASES)
def test_an_export_is_whole_or_absent(models, no_torch, tmp_path, fault, older):
  if fault == 'no torch' and not older:
    pytest.skip('without an older export: the plain case')
  code, out, err, before, after = run_case(models, tmp_path, fault, older, no_torch)
  outcome = CASES[fault][3].format(target=tmp_path / 'disk' / 'out' / 'model')
  assert 'Traceback' not in out + err, err[-3000:]
  lines = err.splitlines()
  if outcome == 'new':
    assert code == 0, err[-3000:]
    assert all(LOG_LINE.match(line) for line in lines), err[-3000:]
    assert os.listdir(after) == ['model']  # nothing beside it
    names = ('model.jax', 'model.json') if fault == 'no torch' else (
        'model.jax', 'model.json', 'model.onnx')
    assert_complete_export(after / 'model', 'checkpoint', names)
    assert out.endswith(f'and model.json to {tmp_path / "disk" / "out" / "model"}\n')
    return
  if outcome == 'killed':  # no last word; what it left is a hidden folder the next one removes
    assert code == 128 + signal.SIGKILL and out == ''
    leftover, = set(contents(after)) - set(before) - {p for p in contents(after) if '/' in p}
    assert leftover.startswith('.model.new-')
    export._clear_leftovers(str(after), 'model')  # pylint: disable=protected-access
  else:
    assert code == (75 if outcome.startswith('interrupted') else 2) and out == ''
    assert lines[-1].startswith(outcome if outcome.startswith(('interrupted', 'error'))
                                else 'error: ' + outcome), lines[-1]
    assert all(LOG_LINE.match(line) for line in lines[:-1]), err[-3000:]
  assert contents(after) == before  # exactly as it was
  if older and fault != 'a folder model.onnx':
    assert_complete_export(after / 'model', 'PyTorch checkpoint')


@pytest.mark.parametrize('where', ['a file', 'under a file', 'the workdir', 'a run file',
                                   'a folder model.json', 'a folder of other files'])
def test_an_output_that_cannot_be_an_export_folder_is_refused_first(models, tmp_path, where):
  (tmp_path / 'file').write_text('keep me')
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('keep me')
  (tmp_path / 'card' / 'model.json').mkdir(parents=True)
  output, needle = {
      'a file': (tmp_path / 'file', 'is not a folder'),
      'under a file': (tmp_path / 'file' / 'model', 'a file, not a folder'),
      'the workdir': (models / 'run', 'is the workdir'),
      'a run file': (models / 'run' / 'checkpoints', 'is a file of the run'),
      'a folder model.json': (tmp_path / 'card', 'is not a regular file'),
      'a folder of other files': (tmp_path / 'other', "holds 'notes.txt'"),
  }[where]
  before = contents(tmp_path), contents(models / 'run')
  with pytest.raises(UserError, match=needle) as raised:
    export.check_output(str(output), str(models / 'run'))
  assert '\n' not in str(raised.value)
  assert (contents(tmp_path), contents(models / 'run')) == before


def test_without_an_atomic_exchange_a_crash_between_the_renames_is_undone_next_time(
    models, tmp_path, monkeypatch):
  """Where renameat2 cannot exchange (an old kernel, some file systems), the old folder is set
  aside first: a crash right after that leaves no export in place, and the next export puts the
  old one back before anything else."""
  shutil.copytree(models / 'older', tmp_path / 'model')
  before = contents(tmp_path)

  def no_exchange(a, b):
    raise OSError(errno.EINVAL, 'not here')
  monkeypatch.setattr(export, '_exchange', no_exchange)
  new = tmp_path / '.model.new-999999999-x'  # a process number no process has
  shutil.copytree(models / 'older', new)
  real_rename, calls = os.rename, []

  def crash_after_the_first(a, b):
    calls.append(b)
    real_rename(a, b)
    if len(calls) == 1:
      raise KeyboardInterrupt('killed here')
  monkeypatch.setattr(os, 'rename', crash_after_the_first)
  with pytest.raises(KeyboardInterrupt):
    export._swap(str(new), str(tmp_path / 'model'))  # pylint: disable=protected-access
  monkeypatch.setattr(os, 'rename', real_rename)
  assert not (tmp_path / 'model').exists() and calls == [str(tmp_path / '.model.old-999999999-x')]
  shutil.rmtree(new)
  copy = shutil.copytree(tmp_path, tmp_path.parent / 'copy')
  export._clear_leftovers(str(copy), 'model')  # pylint: disable=protected-access
  assert contents(copy) == before  # the old export back in its place
  export.export(tiny_config(), str(tmp_path / 'model'), str(models / 'run'))  # no exchange
  assert os.listdir(tmp_path) == ['model']  # nothing left beside it
  assert_complete_export(tmp_path / 'model', 'checkpoint')
