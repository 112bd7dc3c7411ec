"""load_torch_file: .pth files as the original training script writes them load (numpy 1 and 2
names); anything else is refused in one plain line, a zip bomb before torch inflates it."""
import collections
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tests.harness import REPO  # noqa: E402

from input_pipeline.errors import DataError
from input_pipeline.safe_pickle import load_torch_file

torch = pytest.importorskip('torch')


@pytest.fixture(scope='module')
def original(tmp_path_factory):
  """A checkpoint saved as the original main.py saves it: {'net': DataParallel state_dict (keys
  'module.'...), 'acc': float, 'epoch': int, 'config': dict with numpy values}."""
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  state = collections.OrderedDict((f'module.{k}', v) for k, v in net.state_dict().items())
  path = tmp_path_factory.mktemp('pth') / 'ckpt.pth'
  torch.save({'net': state, 'acc': 93.25, 'epoch': 7,
              'config': {'total_params': np.int64(123456), 'lr': np.float64(0.1), 'depth': 18}},
             path)
  return path, state


def _rewrite(source, target, old: bytes, new: bytes) -> None:
  """Copies the .pth zip `source` to `target` with `old` replaced by `new` in its data.pkl."""
  with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, 'w') as zout:
    for info in zin.infolist():
      data = zin.read(info)
      if info.filename.endswith('/data.pkl'):
        assert old in data
        data = data.replace(old, new)
      zout.writestr(info.filename, data)  # stored, as torch.save does


def _check(loaded, state) -> None:
  assert list(loaded['net']) == list(state) and isinstance(loaded['net'], collections.OrderedDict)
  for key, tensor in state.items():
    assert torch.equal(loaded['net'][key], tensor)
  assert loaded['acc'] == 93.25 and loaded['epoch'] == 7
  config = loaded['config']
  assert config == {'total_params': 123456, 'lr': 0.1, 'depth': 18}
  assert type(config['total_params']) is np.int64 and type(config['lr']) is np.float64


def test_original_checkpoint_loads(original):
  path, state = original
  _check(load_torch_file(path), state)
  with pytest.raises(pickle.UnpicklingError, match='numpy'):  # control: torch alone refuses it
    torch.load(path, weights_only=True)


def test_numpy1_names_load(original, tmp_path):
  """numpy 1.x writes numpy.core.multiarray.scalar; numpy 2.x numpy._core.multiarray.scalar."""
  path, state = original
  _rewrite(path, tmp_path / 'np1.pth', b'numpy._core.multiarray\nscalar',
           b'numpy.core.multiarray\nscalar')
  with zipfile.ZipFile(tmp_path / 'np1.pth') as archive:
    data = archive.read(next(n for n in archive.namelist() if n.endswith('/data.pkl')))
  assert b'numpy.core.multiarray\nscalar' in data and b'numpy._core' not in data
  _check(load_torch_file(tmp_path / 'np1.pth'), state)


_SCALAR = b'numpy._core.multiarray\nscalar'
_DTYPE_STATE = b'J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t'


@pytest.mark.parametrize('old, new, named', [
    (_SCALAR, b'os\nsystem', 'os.system'),
    (_SCALAR, b'posix\nsystem', 'posix.system'),
    (_SCALAR, b'builtins\neval', 'eval'),
    (_SCALAR, b'numpy\nload', 'numpy.load'),
    (_SCALAR, b'numpy\nfrombuffer', 'numpy.frombuffer'),
    (_SCALAR, b'numpy.core.multiarray\n_reconstruct', 'numpy.core.multiarray._reconstruct'),
    (b'X\x02\x00\x00\x00i8', b'X\x02\x00\x00\x00O8', "numpy.dtype('O8'"),
    (b'X\x02\x00\x00\x00i8', b'X\x02\x00\x00\x00V8', "numpy.dtype('V8'"),
    (_DTYPE_STATE, b'J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t', 'numpy.dtype with fields'),
])
def test_other_globals_are_refused(original, tmp_path, old, new, named):
  path = tmp_path / 'evil.pth'
  _rewrite(original[0], path, old, new)
  with pytest.raises(DataError) as info:
    load_torch_file(path)
  message = str(info.value)
  assert 'is refused' in message and named in message and str(path) in message
  assert '\n' not in message and '\x1b' not in message and 'weights_only' not in message


def test_payload_object_is_refused(tmp_path):

  class Payload:

    def __reduce__(self):
      return (print, ('ran',))

  path = tmp_path / 'evil.pth'
  torch.save({'net': {}, 'x': Payload()}, path)
  with pytest.raises(DataError, match=r'is refused: it asks for print\b'):
    load_torch_file(path)


@pytest.mark.parametrize('damage, expected', [
    ('missing', 'does not exist'), ('folder', 'is a folder'), ('truncated', 'truncated'),
    ('text', 'not valid'), ('empty', 'not valid')])
def test_damaged_files(original, tmp_path, damage, expected):
  path = tmp_path / 'ckpt.pth'
  content = original[0].read_bytes()
  if damage == 'folder':
    path.mkdir()
  elif damage != 'missing':
    path.write_bytes({'truncated': content[:len(content) // 2], 'text': b'<html>404</html>',
                      'empty': b''}[damage])
  with pytest.raises(DataError) as info:
    load_torch_file(path)
  message = str(info.value)
  assert expected in message and str(path) in message
  assert '\n' not in message and '\x1b' not in message and 'weights_only' not in message


_TORCH_ALONE = r'''
import sys, numpy as np, torch
from tests.memory import peak_mb
before = peak_mb()
with torch.serialization.safe_globals([np._core.multiarray.scalar, np.dtype,
                                       np.dtypes.Int64DType, np.dtypes.Float64DType]):
  torch.load(sys.argv[1], weights_only=True)
print(peak_mb() - before)
'''


def test_zip_bomb_is_refused_before_inflating(original, tmp_path, monkeypatch):
  """The checkpoint with 256 MB of zeros after its data.pkl's STOP, deflated into ~1 MB: torch
  alone inflates it all (and loads it); here the sizes the zip declares refuse it first."""
  path = tmp_path / 'bomb.pth'
  with (zipfile.ZipFile(original[0]) as zin,
        zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED, compresslevel=1) as zout):
    for info in zin.infolist():
      if not info.filename.endswith('/data.pkl'):
        zout.writestr(info.filename, zin.read(info), zipfile.ZIP_STORED)
        continue
      with zout.open(info.filename, 'w', force_zip64=True) as member:
        member.write(zin.read(info))
        for _ in range(256):
          member.write(bytes(1 << 20))
  assert path.stat().st_size < 4 << 20
  # Control, in a fresh process: torch alone loads it, its peak memory growing by the 256 MB.
  done = subprocess.run([sys.executable, '-c', _TORCH_ALONE, str(path)], capture_output=True,
                        text=True, timeout=120, check=False, cwd=REPO)
  assert done.returncode == 0 and float(done.stdout.split()[-1]) > 200, done.stderr[-2000:]

  def inflate(*args, **kwargs):
    raise AssertionError('torch.load reached the zip bomb')

  monkeypatch.setattr(torch, 'load', inflate)
  with pytest.raises(DataError, match='zip bomb') as info:
    load_torch_file(path)
  assert str(path) in str(info.value) and '\n' not in str(info.value)
