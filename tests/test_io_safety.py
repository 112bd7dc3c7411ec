"""What predict and export read and write, as the user's shell hands them over: an --input is
images or a pickle by its content (a .gif too); no output ever lands on a file the input names,
however it is spelled; every untrusted read is bounded by its kind (FIFOs, /dev/zero, sparse
giants refused at once, in one line); an --output that is a link writes its real target and
stays a link, and /dev/stdout (here a link of the test's own to /proc/self/fd/1) is the stdout
the shell gave."""
import json
import os
import pathlib
import pty
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flax_seresnet import export, inference, train
from flax_seresnet.errors import UserError
from input_pipeline import DataError, files as input_files
from tests import fake_data
from tests.harness import LOG_LINE, TINY, assert_log_then_one_error, run_cli
from tests.train_helpers import REPO, tiny_config


@pytest.fixture(scope='module')
def trained(learnable_cifar10_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('io_safety')
  train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=1), str(workdir))
  return workdir


def predict_args(workdir, input_path, output):
  return [*TINY, f'--workdir={workdir}', '--mode=predict', f'--input={input_path}',
          f'--output={output}', '--top_k=1']


def gray(path, value=128, bits=8):
  pixels = np.full((32, 32), value, np.uint8)
  Image.fromarray(pixels.astype(np.uint16) * 257 if bits == 16 else pixels).save(path)
  return path


# --- class 2: what an input is -------------------------------------------------------------

def test_a_gif_input_and_a_16_bit_png_through_the_command_line(trained, tmp_path):
  Image.fromarray(np.full((32, 32, 3), (200, 30, 40), np.uint8)).save(tmp_path / 'x.gif')
  result = run_cli(*predict_args(trained, tmp_path / 'x.gif', tmp_path / 'p.csv'))
  assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert all(LOG_LINE.match(line) for line in result.stderr.splitlines()), result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2 and lines[0].startswith(f'{tmp_path / "x.gif"}: ') and (
      lines[1] == f'wrote 1 predictions to {tmp_path / "p.csv"}'), result.stdout
  # The 16-bit mid-gray and its 8-bit twin: the same pixels, the same prediction.
  folder = tmp_path / 'twins'
  folder.mkdir()
  gray(folder / 'a8.png'), gray(folder / 'b16.png', bits=16)
  inference.predict(tiny_config(), str(folder), str(tmp_path / 'twins.csv'), str(trained))
  rows = (tmp_path / 'twins.csv').read_text().splitlines()[1:]
  assert [r.split(',')[1:] for r in rows[:1]] == [r.split(',')[1:] for r in rows[1:]], rows


def test_an_input_that_is_neither_is_one_line(trained, tmp_path):
  (tmp_path / 'notes.dat').write_text('ID,Labels\n')
  result = run_cli(*predict_args(trained, tmp_path / 'notes.dat', tmp_path / 'p.csv'))
  assert_log_then_one_error(result, 2, f'--input {tmp_path / "notes.dat"} is neither an image')
  assert not (tmp_path / 'p.csv').exists()


# --- class 3: never write over an input ----------------------------------------------------

def inputs(tmp_path):
  """The inputs of each kind and the files each names."""
  photos = tmp_path / 'photos'
  (photos / 'sub').mkdir(parents=True)
  for name in ('01.png', '02.gif', 'sub/03.jpg'):
    gray(photos / name)
  outside = gray(tmp_path / 'outside.png')
  (photos / '04.png').symlink_to(outside)  # an image of the folder that lives elsewhere
  (tmp_path / 'list.txt').write_text('photos/01.png\nphotos/sub/03.jpg\noutside.png\n')
  hidden = tmp_path / 'hidden.pkl'
  fake_data.write_pickle(hidden, {'data': fake_data.make_batch(3, 0)['data'], 'ids': [1, 2, 3]})
  return {photos: [photos / '01.png', photos / '02.gif', photos / 'sub' / '03.jpg',
                   photos / '04.png', outside],
          tmp_path / 'list.txt': [tmp_path / 'list.txt', photos / '01.png',
                                  photos / 'sub' / '03.jpg', outside],
          hidden: [hidden]}


def spellings(path: pathlib.Path, tmp_path):
  """Other names of the file `path`: relative, with ./ and .., a link to it, a hard link."""
  (tmp_path / 'alias').mkdir(parents=True)
  link, hard = tmp_path / 'alias' / f'link_{path.name}', tmp_path / 'alias' / f'hard_{path.name}'
  link.symlink_to(path)
  os.link(os.path.realpath(path), hard)
  return [str(path), os.path.relpath(path), f'{path.parent}/./../{path.parent.name}/{path.name}',
          str(link), str(hard)]


def test_no_spelling_of_any_file_an_input_names_is_written(trained, tmp_path):
  for input_path, named in inputs(tmp_path).items():
    before = {p: p.read_bytes() for p in named}
    for file in named:
      for output in spellings(file, tmp_path / f'{input_path.name}_{file.name}'):
        with pytest.raises(UserError, match='is also the input') as raised:
          inference.predict(tiny_config(), str(input_path), output, str(trained))
        assert '\n' not in str(raised.value)
    assert {p: p.read_bytes() for p in named} == before, input_path
    assert all(not p.is_symlink() for p in named if p.name != '04.png')


def test_an_output_beside_the_inputs_is_written(trained, tmp_path):
  photos = next(iter(inputs(tmp_path)))
  rows, _ = inference.predict(tiny_config(), str(photos), str(photos / 'predictions.csv'),
                              str(trained))
  assert rows == 4 and (photos / 'predictions.csv').read_text().startswith('path,label')


def test_an_input_image_as_output_through_the_command_line(trained, tmp_path):
  photos = next(iter(inputs(tmp_path)))
  before = (photos / 'sub' / '03.jpg').read_bytes()
  result = run_cli(*predict_args(trained, photos, photos / 'sub' / '03.jpg'))
  assert_log_then_one_error(result, 2, f'--output {photos / "sub" / "03.jpg"} is also the input')
  assert (photos / 'sub' / '03.jpg').read_bytes() == before


# --- class 4: every untrusted read bounded by its kind -------------------------------------

@pytest.mark.parametrize('kind', input_files.LIMITS)
def test_the_reader_refuses_a_file_over_its_kind_s_bound_before_reading(tmp_path, kind,
                                                                        monkeypatch):
  limit = input_files.LIMITS[kind]
  path = tmp_path / 'big'
  with open(path, 'wb') as f:
    f.truncate(limit + 1)  # sparse: no disk used, and never read
  with pytest.raises(DataError) as raised:
    input_files.read_file(path, 'the file', kind)
  assert str(raised.value).startswith(
      f'the file {path} is {input_files.size_text(limit + 1)} ({limit + 1} bytes), over the '
      f'{input_files.size_text(limit)} read for a file of its kind: ')
  monkeypatch.setitem(input_files.LIMITS, kind, 10)  # the bound itself is read
  path.write_bytes(b'x' * 10)
  assert input_files.read_file(path, 'the file', kind) == b'x' * 10
  path.write_bytes(b'x' * 11)
  with pytest.raises(DataError, match=r'is 11 bytes \(11 bytes\), over the 10 bytes read'):
    input_files.read_file(path, 'the file', kind)


# Each reader of an untrusted path, in a process of its own with 3 GiB of address space and
# 20 s per case (an unbounded read fails there instead of taking the machine down), its result
# one JSON line a case.
READERS = r'''
import json, os, resource, signal, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from flax_seresnet import export, torch_bridge
from input_pipeline import images, load_unlabeled
from tests.memory import peak_mb
def alarm(*_):
  raise TimeoutError('no answer in 20 s')
signal.signal(signal.SIGALRM, alarm)
READ = {'image': images.read_image, 'list': images.image_paths, 'pickle': load_unlabeled,
        'input': images.input_kind, 'torch': torch_bridge.read_state_dict,
        'card': lambda p: export.load(os.path.dirname(p)),
        'artifact': lambda p: export.load(os.path.dirname(p))}
for reader, path in json.loads(sys.argv[1]):
  started = time.monotonic()
  signal.alarm(20)
  try:
    READ[reader](path)
    error = None
  except BaseException as e:
    error = f'{type(e).__name__}: {e}'
  signal.alarm(0)
  print(json.dumps([reader, path, error, time.monotonic() - started]), flush=True)
print(json.dumps(['peak MB', peak_mb()]))
'''
NAMES = {'image': 'x.png', 'list': 'x.txt', 'pickle': 'x.pkl', 'input': 'x.dat',
         'torch': 'x.pth', 'card': export.CARD, 'artifact': export.ARTIFACT}


def special(path, what):
  if what == 'fifo':
    os.mkfifo(path)
  elif what == 'device':  # /dev/zero's numbers, in a folder of the test's own
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))
  else:
    with open(path, 'wb') as f:
      f.truncate(8 << 30)  # 8 GiB, sparse


@pytest.mark.skipif(os.geteuid() != 0, reason='mknod needs root')
def test_every_reader_refuses_fifos_devices_and_giants_at_once(tmp_path):
  cases = []
  for reader, name in NAMES.items():
    for what in ('fifo', 'device', 'sparse'):
      folder = tmp_path / f'{reader}_{what}'
      folder.mkdir()
      if reader == 'artifact':  # a card that names it
        (folder / export.CARD).write_text('{"files": {"model.jax": "0"}}')
      special(folder / name, what)
      cases.append((reader, str(folder / name)))
  result = subprocess.run([sys.executable, '-c', READERS, json.dumps(cases)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]
  *answers, (_, peak) = map(json.loads, result.stdout.splitlines())
  assert len(answers) == len(cases) and peak < 1500, (len(answers), peak)
  for reader, path, error, seconds in answers:
    kind = 'is not a regular file' if 'sparse' not in path else (
        '8.0 GiB (8589934592 bytes), over the ' if reader != 'input' else 'is neither an image')
    assert error and error.split(':')[0] in ('DataError', 'CheckpointError'), (path, error)
    assert f'{path} {kind}' in error or f'{path} is {kind}' in error, (path, error)
    assert '\n' not in error and seconds < 5, (path, error, seconds)


def test_a_giant_image_in_a_folder_is_skipped_in_one_line(trained, tmp_path):
  gray(tmp_path / 'a.png')
  special(tmp_path / 'b.png', 'sparse')
  result = run_cli(*predict_args(trained, tmp_path, tmp_path / 'p.csv'))
  assert result.returncode == 0, result.stderr[-3000:]
  skipped = [line for line in result.stderr.splitlines() if 'skipped: ' in line]
  assert len(skipped) == 1 and skipped[0].endswith(
      f'skipped: image {tmp_path / "b.png"} is 8.0 GiB (8589934592 bytes), over the 64.0 MiB '
      'read for a file of its kind: check that it is the right file, or give a smaller one')
  assert result.stdout.splitlines()[-1] == (
      f'wrote 1 predictions to {tmp_path / "p.csv"}; 1 file skipped, named on stderr with the '
      'reason (`warning: skipped: ...`)')


# --- class 6: an output that is a link -----------------------------------------------------

def hidden_set(folder):
  path = folder / 'hidden.pkl'
  fake_data.write_pickle(path, {'data': fake_data.make_batch(5, 0)['data'], 'ids': list(range(5))})
  return path


def test_an_output_link_writes_its_real_target_and_stays_a_link(trained, tmp_path):
  hidden = hidden_set(tmp_path)
  (tmp_path / 'real').mkdir()
  links = {'absolute': tmp_path / 'real' / 'a.csv', 'relative': pathlib.Path('real/b.csv'),
           'chain': tmp_path / 'absolute', 'dangling': tmp_path / 'real' / 'new.csv'}
  (tmp_path / 'real' / 'a.csv').write_text('old')
  (tmp_path / 'real' / 'b.csv').write_text('old')
  for name, target in links.items():
    (tmp_path / name).symlink_to(target)
  for name, target in links.items():
    inference.predict(tiny_config(), str(hidden), str(tmp_path / name), str(trained))
    assert (tmp_path / name).is_symlink() and os.readlink(tmp_path / name) == str(target)
    assert (tmp_path / name).read_text().startswith('ID,Labels\n'), name
  assert sorted(os.listdir(tmp_path / 'real')) == ['a.csv', 'b.csv', 'new.csv']  # no temporary


def stdout_link_run(trained, tmp_path, stdout, stderr=subprocess.PIPE):
  """main.py predicting into a link of the test's own to /proc/self/fd/1, as /dev/stdout is."""
  (tmp_path / 'stdout').symlink_to('/proc/self/fd/1')
  args = predict_args(trained, hidden_set(tmp_path), tmp_path / 'stdout')
  return subprocess.run([sys.executable, str(REPO / 'main.py'), *map(str, args)], cwd=REPO,
                        stdout=stdout, stderr=stderr, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'})


def test_stdout_redirected_to_a_file_gets_the_csv(trained, tmp_path):
  with open(tmp_path / 'out.csv', 'w') as out, open(tmp_path / 'err.txt', 'w') as err:
    result = stdout_link_run(trained, tmp_path, out, err)  # as `main.py ... > out.csv 2> err`
  err = (tmp_path / 'err.txt').read_text()
  assert result.returncode == 0 and 'Traceback' not in err, err[-3000:]
  assert all(LOG_LINE.match(line) for line in err.splitlines()), err
  lines = (tmp_path / 'out.csv').read_text().splitlines()
  assert lines[0] == 'ID,Labels' and [r.split(',')[0] for r in lines[1:]] == list('01234')
  assert (tmp_path / 'stdout').is_symlink()  # the link is not replaced by a file


@pytest.mark.skipif(os.geteuid() != 0, reason='mknod needs root')
@pytest.mark.parametrize('kind', ['pipe', 'terminal', 'device', 'fifo'])
def test_stdout_that_is_not_a_regular_file_is_refused_in_one_line(trained, tmp_path, kind):
  if kind == 'pipe':
    result = stdout_link_run(trained, tmp_path, subprocess.PIPE)
    assert result.stdout == ''
  else:
    if kind == 'terminal':
      keep, fd = pty.openpty()
    elif kind == 'device':  # /dev/null's numbers, in a folder of the test's own
      os.mknod(tmp_path / 'null', stat.S_IFCHR | 0o666, os.makedev(1, 3))
      fd = os.open(tmp_path / 'null', os.O_WRONLY)
    else:
      os.mkfifo(tmp_path / 'fifo')
      fd = os.open(tmp_path / 'fifo', os.O_RDWR)  # a reader of its own: opening never waits
    result = stdout_link_run(trained, tmp_path, fd)
    os.close(fd)
    if kind == 'terminal':
      os.close(keep)
  result.stdout = ''
  assert_log_then_one_error(result, 2, f'--output {tmp_path / "stdout"} is not a regular file')
  assert (tmp_path / 'stdout').is_symlink() and sorted(os.listdir(tmp_path)) == sorted(
      ['stdout', 'hidden.pkl', *(['null'] if kind == 'device' else []),
       *(['fifo'] if kind == 'fifo' else [])])
