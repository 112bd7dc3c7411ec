"""The fault matrix: every mode x every path it takes x every fault, generated, not listed.

Modes: train, resume, eval, predict on a pickle, predict on images, export, load of an export.
Paths: the workdir and its files, the data folder and a batch, --input and a file in it,
--output, the export folder and its files. Faults: missing; a folder where a file is expected
or a file where a folder is; a FIFO; a link to /dev/zero; a link to a victim file; a name with a
space, a newline, a comma and a byte that is not UTF-8; a path under a regular file; a limit on
open files (ulimit -n) and on file size (ulimit -f).

The contract, for each case: it ends within the time limit with exit 0 (the fault did no harm)
or 2 and one `error:` line last; no traceback anywhere in stdout or stderr; the victim and every
input are untouched; nothing half-written (no temporary file) is left; and once the fault is
removed, the same command succeeds. A scenario test (minutes): CI runs it, and
`bash run.sh test -m scenario -k fault_matrix`.
"""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from flax_seresnet import train
from tests import fake_data
from tests.harness import TINY
from tests.train_helpers import REPO, tiny_config

pytestmark = pytest.mark.scenario
BAD_NAME = 'a b,\nc\udcff'  # a space, a comma, a newline and a byte that is not UTF-8
LOAD = ('import sys\nfrom flax_seresnet import export\nfrom flax_seresnet.errors import ERRORS\n'
        'try:\n  export.load(sys.argv[1])\nexcept ERRORS as e:\n'
        "  print('error:', ' '.join(str(e).split()), file=sys.stderr); sys.exit(2)\n")


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """One trained tiny run, its data, a pickle, images and an export: copied for each case."""
  root = tmp_path_factory.mktemp('matrix')
  data = fake_data.write_fake_cifar10(root / 'data', per_batch=64, test_count=64, learnable=True)
  train.train_and_evaluate(tiny_config(data, num_epochs=1), str(root / 'run'))
  fake_data.write_pickle(root / 'hidden.pkl', {'data': fake_data.make_batch(5, 9)['data'],
                                               'ids': list(range(5))})
  from PIL import Image
  import numpy as np
  (root / 'photos').mkdir()
  for i in range(3):
    Image.fromarray(np.full((32, 32, 3), 80 * i, np.uint8)).save(root / 'photos' / f'{i}.png')
  result = cli(common(root, root / 'run') + ['--mode=export', f'--output={root / "exported"}'])
  assert result.returncode == 0, result.stderr[-2000:]
  return root


def common(root, workdir):
  return [*TINY, f'--config.data_dir={root / "data"}', '--config.num_epochs=1',
          f'--workdir={workdir}']


# Each mode: (its command in a case's folder `c`, the paths it takes: name -> path in `c`).
MODES = {
    'train': (lambda c: common(c, c / 'new'), {'workdir': 'new', 'data_dir': 'data',
                                              'batch': 'data/data_batch_3'}),
    'resume': (lambda c: common(c, c / 'run')[:-2] + ['--config.num_epochs=2', f'--workdir={c / "run"}'],
               {'checkpoints': 'run/checkpoints', 'metrics': 'run/metrics.jsonl',
                'config_json': 'run/config.json', 'run_log': 'run/run.log'}),
    'eval': (lambda c: common(c, c / 'run') + ['--mode=eval'],
             {'checkpoints': 'run/checkpoints', 'test_batch': 'data/test_batch'}),
    'predict_pickle': (lambda c: common(c, c / 'run') + [
        '--mode=predict', f'--input={c / "hidden.pkl"}', f'--output={c / "out.csv"}'],
        {'input': 'hidden.pkl', 'output': 'out.csv'}),
    'predict_images': (lambda c: common(c, c / 'run') + [
        '--mode=predict', f'--input={c / "photos"}', f'--output={c / "out.csv"}'],
        {'input': 'photos', 'image': 'photos/1.png', 'output': 'out.csv'}),
    'export': (lambda c: common(c, c / 'run') + ['--mode=export', f'--output={c / "exported"}'],
               {'output': 'exported', 'card': 'exported/model.json'}),
    'load': (lambda c: ['LOAD', str(c / 'exported')],
             {'folder': 'exported', 'card': 'exported/model.json',
              'artifact': 'exported/model.jax'}),
}


def cli(args, limit=None, timeout=180):
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
  command = ([sys.executable, '-c', LOAD, *args[1:]] if args[0] == 'LOAD' else
             [sys.executable, str(REPO / 'main.py'), *map(str, args)])
  if limit:  # a process limit, set by the shell that starts it
    command = ['bash', '-c', f'ulimit {limit}; exec "$@"', 'bash', *command]
  return subprocess.run([os.fsencode(a) if isinstance(a, str) else a for a in command],
                        capture_output=True, env=env, timeout=timeout, cwd=REPO)


# Each fault: applied to the path `p` of case folder `c`; returns (the original set aside, when
# the fault took its place; the args' path rewrite (old, new); the shell's process limit).
def replace(p, make):
  """Puts `make(p)` where `p` was (the original, if any, set aside)."""
  aside = p.with_name(p.name + '.aside')
  if os.path.lexists(p):
    os.rename(p, aside)
  make(p)
  return aside


def swapped(q):
  """A folder where a file was (or nothing was), a file where a folder was."""
  if q.with_name(q.name + '.aside').is_dir():
    q.write_text('a file')
  else:
    q.mkdir()


FAULTS = {
    'missing': lambda p, c: (replace(p, lambda q: None), None, None),
    'swapped': lambda p, c: (replace(p, swapped), None, None),
    'fifo': lambda p, c: (replace(p, os.mkfifo), None, None),
    'dev_zero': lambda p, c: (replace(p, lambda q: q.symlink_to('/dev/zero')), None, None),
    'victim_link': lambda p, c: (replace(p, lambda q: q.symlink_to(c / 'victim')), None, None),
    'odd_name': lambda p, c: (None, (p, p.with_name(os.fsdecode(
        os.fsencode(p.name + BAD_NAME)))), None),
    'under_a_file': lambda p, c: (None, (p, c / 'victim' / p.name), None),
    'open_files': lambda p, c: (None, None, '-n 24'),
    'file_size': lambda p, c: (None, None, '-f 64'),
}
# A link to the victim as an --output the user names is written through (a shell's > does the
# same: issue 28's /dev/stdout rule); anywhere else the victim must stay untouched.
USER_OUTPUTS = {('predict_pickle', 'output'), ('predict_images', 'output')}


def digests(folder):
  """Every regular file below `folder` (links not followed): path -> SHA-256."""
  found = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      if os.path.isfile(path) and not os.path.islink(path):
        with open(path, 'rb') as f:
          found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return found


PROCESS_LIMITS = ('open_files', 'file_size')  # of the process, not of a path: once a mode


def named(mode, name) -> bool:
  """Whether the command names the path itself (an odd name is then the user's choice), or it
  is found by listing a folder (an image): otherwise renaming it only takes it away."""
  command, paths = MODES[mode]
  probe = pathlib.Path('/C')
  return name == 'image' or str(probe / paths[name]) in ' '.join(map(str, command(probe)))


def cases():
  for mode, (_, paths) in MODES.items():
    for i, name in enumerate(paths):
      for fault in FAULTS:
        if (i == 0 or fault not in PROCESS_LIMITS) and (fault != 'odd_name' or named(mode, name)):
          yield pytest.param(mode, name, fault, id=f'{mode}-{name}-{fault}')


@pytest.mark.parametrize('mode,name,fault', cases())
def test_each_fault_ends_cleanly_and_the_run_goes_on_once_removed(world, tmp_path, mode, name,
                                                                  fault):
  c = tmp_path / 'case'
  shutil.copytree(world, c, symlinks=True)
  (c / 'victim').write_text('the victim: never written\n')
  command, paths = MODES[mode]
  path = c / paths[name]
  args = [str(a) for a in command(c)]
  aside, rename, limit = FAULTS[fault](path, c)
  if rename:
    old, new = rename
    if old.exists() and fault == 'odd_name':
      os.rename(old, new)
    args = [a.replace(str(old), str(new)) for a in args]
  inputs = {k: v for k, v in digests(c).items()
            if not k.startswith(('run', 'new', 'out', 'victim'))}  # the victim: checked below
  result = cli(args, limit)
  out, err = (os.fsdecode(result.stdout), os.fsdecode(result.stderr))
  assert 'Traceback' not in out + err, err[-3000:]
  assert result.returncode in (0, 2), (result.returncode, err[-3000:])
  if result.returncode == 2:
    lines = err.splitlines()
    assert lines[-1].startswith('error: ') and sum(
        line.startswith('error:') for line in lines) == 1, err[-3000:]
  if (mode, name) not in USER_OUTPUTS:
    assert (c / 'victim').read_text() == 'the victim: never written\n'
  after = {k: v for k, v in digests(c).items() if k in inputs}
  changed = [k for k in inputs if after.get(k) != inputs[k] and 'exported' not in k]
  assert not changed, changed  # no input was written over
  assert not [k for k in digests(c) if k.endswith('.tmp')], 'a half-written file was left'
  undo(aside, rename, path, fault)
  again = cli([str(a) for a in command(c)])
  assert again.returncode == 0, os.fsdecode(again.stderr)[-3000:]


def undo(aside, rename, path, fault):
  """Removes the fault: what took the path's place goes, the original comes back."""
  if aside is not None:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.unlink(path)
    if os.path.lexists(aside):
      os.rename(aside, path)
  elif rename and fault == 'odd_name' and os.path.lexists(rename[1]):
    os.rename(rename[1], rename[0])
