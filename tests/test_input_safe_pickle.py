"""The restricted unpickler: hostile pickles are refused (in a subprocess, so that a crash fails a
test instead of killing the run), legitimate numpy pickles of every protocol load."""
import copyreg
import io
import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from flax_seresnet.errors import DataError
from input_pipeline import load_cifar10, load_unlabeled
from input_pipeline.safe_pickle import safe_load
from tests.conftest import REPO
from tests.fake_data import make_batch, write_fake_cifar10, write_pickle


class G:
  """A global `module.name` in a crafted pickle; calling it stands for a REDUCE (and BUILD)."""

  def __init__(self, path: str):
    self.module, self.name = path.rsplit('.', 1)

  def __call__(self, *args, state=None):
    return _Call(self, args, state)


class _Call:

  def __init__(self, func, args, state):
    self.func, self.args, self.state = func, args, state

  def __reduce__(self):
    return (self.func, self.args) + (() if self.state is None else (self.state,))


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access  (pure Python: patchable)
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
  dispatch[G] = lambda self, g: self.write(f'c{g.module}\n{g.name}\n'.encode())


def craft(obj, protocol: int = 2) -> bytes:
  """Pickles `obj`, writing any G as a GLOBAL of its name, unchecked."""
  f = io.BytesIO()
  _Pickler(f, protocol).dump(obj)
  return f.getvalue()


def _dtype(spec, state=(3, '|', None, None, None, -1, -1, 0), align=False):
  return G('numpy.dtype')(spec, align, True, state=state)


def _array(dtype, shape, raw):
  return G('numpy.core.multiarray._reconstruct')(G('numpy.ndarray'), (0,), b'b',
                                                 state=(1, shape, dtype, False, raw))


_OBJECT_FLAGS = (3, '|', None, None, None, -1, -1, 63)  # what numpy writes for dtype('O')
_U1 = _dtype('u1')
_BAD_DTYPES = {'object': object, 'structured': [('a', 'u1'), ('b', 'O')], 'void': 'V4',
               'unicode': 'U3', 'bytes': 'S3', 'datetime': 'M8[s]', 'timedelta': 'm8[s]',
               'complex': 'c16', 'subarray-field': [('a', 'u1', (2,))]}


def _hostile() -> dict[str, bytes]:
  """Files that must be refused: each would crash, allocate or run code with plain pickle."""
  files = {}
  for name, dtype in _BAD_DTYPES.items():
    array = np.zeros(2, dtype)
    for protocol in (2, 5):
      files[f'{name} array, protocol {protocol}'] = pickle.dumps(array, protocol)
      files[f'{name} array at depth, protocol {protocol}'] = pickle.dumps(
          {'data': np.zeros((1, 3072), np.uint8), 'ids': [{'x': (1, [array])}]}, protocol)
      if dtype is not object:  # an object array's item is a Python object, not a numpy scalar
        files[f'{name} scalar, protocol {protocol}'] = pickle.dumps(array[0], protocol)
  pointers = b'\x41' * 16  # forged PyObject pointers
  object_u1 = _dtype('u1', _OBJECT_FLAGS)
  shared = nested = cycle = []
  for _ in range(25):
    shared = [shared, shared]
  for _ in range(200):
    nested = [nested]
  cycle.append(cycle)
  # Python's hash of an int is the int mod 2**61 - 1: inserting n of one hash costs n**2.
  colliding = [b'\x8a\x0a' + (5 + k * ((1 << 61) - 1)).to_bytes(10, 'little') for k in range(5000)]
  files.update({
      'u1 dtype flagged as holding objects (BUILD)': craft(_array(object_u1, (2,), pointers)),
      # Flags without "pickle as a list": numpy then takes raw bytes for the object field.
      'void dtype given an object field': craft(_array(_dtype('V8', (
          3, '|', None, ('a',), {'a': (_dtype('O8', _OBJECT_FLAGS), 0)}, 8, 1, 61)), (2,),
                                                       pointers)),
      'u1 dtype given an object field': craft(_array(_dtype('u1', (
          3, '|', None, ('a',), {'a': (_dtype('O8', _OBJECT_FLAGS), 0)}, 8, 1, 61)), (2,),
                                                     pointers)),
      'u1 dtype given numeric fields': craft(_dtype('u1', (3, '|', None, ('a',), {'a': (_U1, 0)},
                                                           1, 1, 0))),
      'u1 dtype given a subarray': craft(_dtype('u1', (3, '|', (_U1, (8,)), None, None, 8, 1, 0))),
      'dtype with metadata': craft(_dtype('u1', (4, '|', None, None, None, -1, -1, 0, {'a': 1}))),
      'aligned dtype': craft(_dtype('u1', align=True)),
      'object dtype string': craft(_array(_dtype('O8', _OBJECT_FLAGS), (2,), pointers)),
      'scalar of object dtype': craft(G('numpy._core.multiarray.scalar')(
          _dtype('O8', _OBJECT_FLAGS), pointers[:8])),
      'scalar of flagged u1': craft(G('numpy.core.multiarray.scalar')(object_u1, pointers[:1])),
      '_frombuffer of object dtype': craft(G('numpy._core.numeric._frombuffer')(
          pointers, _dtype('O8', _OBJECT_FLAGS), (2,), 'C')),
      'array with a plain tuple as dtype': craft(_array(('O', 8), (2,), pointers)),
      'numpy.ndarray called (1.7 GB)': craft(G('numpy.ndarray')((200000, 3072), 'u1')),
      'shape beyond the bytes (BUILD)': craft(_array(_U1, (200000, 3072), b'\0' * 16)),
      'shape beyond the bytes (_frombuffer)': craft(G('numpy.core.numeric._frombuffer')(
          b'\0' * 16, _U1, (200000, 3072), 'C')),
      'scalar short of bytes': craft(G('numpy.core.multiarray.scalar')(_dtype('i8'), b'\0')),
      'bytes(10**10)': craft(G('__builtin__.bytes')(10**10)),
      'builtins.getattr': craft(G('builtins.getattr')(_U1, '__class__')),
      'numpy.matrix': craft(G('numpy.core.multiarray._reconstruct')(
          G('numpy.matrixlib.defmatrix.matrix'), (0,), b'b', state=(1, (1,), _U1, False, b'1'))),
      'persistent id': b'\x80\x02X\x01\x00\x00\x00aQ.',
      'memo index 2**28': b'\x80\x02]r' + struct.pack('<I', 1 << 28) + b'.',
      'BINBYTES8 of 40 GB': b'\x80\x04\x8e' + struct.pack('<Q', 40 << 30) + b'abc.',
      'BYTEARRAY8 of 4 GB': b'\x80\x05\x96' + struct.pack('<Q', 4 << 30) + b'abc.',
      'BUILD on an allowed function': b'\x80\x02c_codecs\nencode\nN}X\x08\x00\x00\x00__name__'
                                      b'X\x01\x00\x00\x00xs\x86b.',
      'shared-list bomb (2**25 visits)': pickle.dumps(shared, 2),
      'shared-dict bomb': pickle.dumps(_dict_bomb(), 4),
      'dict of 5000 ints of one hash': b'\x80\x02}(' + b'N'.join(colliding) + b'Nu.',
      'set of 5000 ints of one hash': b'\x80\x04\x8f(' + b''.join(colliding) + b'\x90.',
      'frozenset of 5000 ints of one hash': b'\x80\x04(' + b''.join(colliding) + b'\x91.',
      'protocol-0 dict with an int key': b'(I1\nI2\nd.',
      'one SETITEM with a tuple key': b'\x80\x02}K\x01\x85K\x02s.',
      '200 nested lists': pickle.dumps(nested, 2),
      'list holding itself': pickle.dumps(cycle, 2),
  })
  return files


def _dict_bomb():
  d = {}
  for _ in range(25):
    d = {'a': d, 'b': d}
  return d


HOSTILE = _hostile()

_RUNNER = r'''
import json, sys, time
from flax_seresnet.errors import DataError
from input_pipeline.safe_pickle import safe_load
from tests.memory import peak_mb
results = {}
for path in sys.argv[1:]:
  print(path, file=sys.stderr, flush=True)  # names the file if the process crashes
  rss, start = peak_mb(), time.perf_counter()
  try:
    outcome = 'loaded ' + repr(safe_load(path))[:200]
  except DataError as e:
    outcome = 'DataError ' + str(e)
  results[path] = (outcome, time.perf_counter() - start, peak_mb() - rss)
print(json.dumps(results))
'''


def run_isolated(runner: str, args: list[str], timeout: float = 60) -> dict:
  """Runs `runner` in a fresh Python; a crash (e.g. a segfault, exit 139) fails the test."""
  done = subprocess.run([sys.executable, '-c', runner, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, check=False)
  assert done.returncode == 0, f'exit {done.returncode}: {done.stderr[-2000:]}'
  return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope='module')
def hostile_results(tmp_path_factory):
  folder = tmp_path_factory.mktemp('hostile')
  paths = {}
  for i, (name, content) in enumerate(HOSTILE.items()):
    paths[name] = folder / f'{i}.pkl'
    paths[name].write_bytes(content)
  results = run_isolated(_RUNNER, [str(p) for p in paths.values()])
  return {name: results[str(path)] + [str(path)] for name, path in paths.items()}


@pytest.mark.parametrize('name', list(HOSTILE))
def test_hostile_file_is_refused_quickly(hostile_results, name):
  outcome, seconds, rss_growth_mb, path = hostile_results[name]
  if name == 'memo index 2**28':  # cheap in the pure-Python unpickler: its memo is a dict
    assert outcome == 'loaded []'
  else:
    assert outcome.startswith('DataError ') and path in outcome and '\n' not in outcome, outcome
  assert seconds < 1.0
  assert rss_growth_mb < 100


def test_hostile_files_are_real(tmp_path):
  """Control: plain pickle builds an object array from forged pointers (using it crashes), and
  the bombs."""
  path = tmp_path / 'evil.pkl'
  path.write_bytes(HOSTILE['void dtype given an object field'])
  crash = ('import pickle, sys, numpy; array = pickle.load(open(sys.argv[1], "rb")); '
           'print(array.dtype, flush=True); numpy.asarray([array])')
  done = subprocess.run([sys.executable, '-c', crash, str(path)], capture_output=True, text=True,
                        timeout=60, check=False)
  assert done.stdout.startswith("[('a', 'O')]") and done.returncode != 0
  assert pickle.loads(HOSTILE['object array, protocol 5']).dtype == object
  shared = pickle.loads(HOSTILE['shared-list bomb (2**25 visits)'])
  assert shared[0] is shared[1]


@pytest.mark.parametrize('name', ['void dtype given an object field',
                                  'u1 dtype flagged as holding objects (BUILD)',
                                  'object array, protocol 2', 'shared-list bomb (2**25 visits)'])
def test_refusals_name_the_cause(tmp_path, name):
  path = tmp_path / 'x.pkl'
  path.write_bytes(HOSTILE[name])
  with pytest.raises(DataError, match='is refused: it (asks for (a )?numpy.dtype|nests)'):
    safe_load(path)


def _global_call(module: str, name: str, *args: str) -> bytes:
  """A protocol-0 pickle that imports module.name and calls it with string args."""
  arg_ops = b''.join(b'V' + a.encode() + b'\n' for a in args)
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n(' + arg_ops + b'tR.'


def _attacks(marker) -> dict[str, bytes]:
  """Pickles that, loaded with plain pickle.load, create `marker` or import modules."""
  touch = f'touch {marker}'
  python = f"open({str(marker)!r}, 'w').close()"
  return {
      'os.system': _global_call('os', 'system', touch),
      'posix.system': _global_call('posix', 'system', touch),
      'subprocess.getoutput': _global_call('subprocess', 'getoutput', touch),
      'builtins.eval': _global_call('builtins', 'eval', python),
      'builtins.exec': _global_call('builtins', 'exec', python),
      'importlib.import_module': _global_call('importlib', 'import_module', 'antigravity'),
      'builtins.__import__': _global_call('builtins', '__import__', 'antigravity'),
      'numpy.load': _global_call('numpy', 'load', str(marker)),
      'numpy.frombuffer': _global_call('numpy', 'frombuffer', str(marker)),
  }


@pytest.mark.parametrize('attack', list(_attacks('m')))
def test_attack_is_refused_and_runs_nothing(tmp_path, attack):
  marker = tmp_path / 'marker'
  path = tmp_path / 'evil.pkl'
  path.write_bytes(_attacks(marker)[attack])
  had_antigravity = 'antigravity' in sys.modules
  with pytest.raises(DataError, match='is refused') as info:
    safe_load(path)
  message = str(info.value)
  assert '\n' not in message and str(path) in message
  assert attack in message  # names the refused global
  assert not marker.exists()
  assert ('antigravity' in sys.modules) == had_antigravity


def test_the_attacks_are_real(tmp_path):
  """Control: plain pickle.load does run the crafted file."""
  marker = tmp_path / 'marker'
  pickle.loads(_attacks(marker)['builtins.exec'])
  assert marker.exists()


def test_attack_hidden_after_valid_array_in_a_batch(tmp_path):
  marker = tmp_path / 'marker'
  folder = write_fake_cifar10(tmp_path / 'cifar')

  class Payload:

    def __reduce__(self):
      return (eval, (f"open({str(marker)!r}, 'w').close()",))

  batch = make_batch(4, 0)
  batch['filenames'] = [Payload()]
  write_pickle(folder / 'data_batch_2', batch)
  with pytest.raises(DataError, match=r'data_batch_2.*(__builtin__|builtins)\.eval'):
    load_cifar10(folder)
  path = tmp_path / 'unlabeled.pkl'
  path.write_bytes(_attacks(marker)['os.system'])
  with pytest.raises(DataError, match='refused'):
    load_unlabeled(path)
  assert not marker.exists()


def test_copyreg_extension_code_is_refused(tmp_path):
  """EXT opcodes name globals through copyreg; they go through find_class too."""
  marker = tmp_path / 'marker'
  code = 0x7ABC  # fits EXT2
  copyreg.add_extension('os', 'system', code)
  try:
    command = f'touch {marker}'.encode()
    payload = (b'\x80\x02\x83' + code.to_bytes(2, 'little') + b'X' +
               len(command).to_bytes(4, 'little') + command + b'\x85R.')
    path = tmp_path / 'ext.pkl'
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r'os\.system'):
      safe_load(path)
  finally:
    copyreg.remove_extension('os', 'system', code)
  assert not marker.exists()


@pytest.mark.parametrize('codec, refused', [('rot13', True), ('utf-16', True),
                                            ('latin1', False), ('latin-1', False)])
def test_codecs_encode_only_with_latin1(tmp_path, codec, refused):
  path = tmp_path / 'codec.pkl'
  path.write_bytes(_global_call('_codecs', 'encode', 'abc', codec))
  if refused:
    with pytest.raises(DataError, match='only latin-1'):
      safe_load(path)
  else:
    assert safe_load(path) == b'abc'


# --- what must load


_NUMERIC = ['?', 'i1', 'u1', '<i2', '>i2', '<u2', '>u4', '<i4', '>i8', '<u8', '<f2', '>f2', '<f4',
            '>f4', '<f8', '>f8']


@pytest.mark.parametrize('protocol', range(6))
@pytest.mark.parametrize('spec', _NUMERIC)
def test_numeric_arrays_and_scalars_load(tmp_path, protocol, spec):
  """Every plain numeric dtype, byte order and layout, as arrays and as numpy scalars."""
  base = (np.arange(24) % 7).astype(spec).reshape(2, 3, 4)
  arrays = [base, np.asfortranarray(base), base.transpose(1, 0, 2), base[:, ::2], base[:0]]
  path = tmp_path / 'ok.pkl'
  write_pickle(path, {'arrays': arrays, 'scalars': [base.flat[3], base.flat[5]]}, protocol)
  loaded = safe_load(path)
  for got, want in zip(loaded['arrays'], arrays):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
  assert [type(s) for s in loaded['scalars']] == [type(base.flat[3])] * 2
  assert loaded['scalars'] == [base.flat[3], base.flat[5]]


def test_byte_order_is_applied(tmp_path):
  """A loader that dropped the dtype's BUILD state would read 1 as 2**24 here."""
  path = tmp_path / 'be.pkl'
  write_pickle(path, np.array([1, 2], '>i4'))
  got = safe_load(path)
  assert got.dtype == np.dtype('>i4') and got.tolist() == [1, 2]
  assert np.frombuffer(got.tobytes(), '<i4').tolist() == [1 << 24, 2 << 24]


@pytest.mark.parametrize('protocol', [2, 3, 4, 5])
def test_false_positives_load(tmp_path, protocol):
  """Empty bytes, empty arrays and lists of numpy scalars are not attacks."""
  content = {'empty': b'', 'array': np.zeros((0, 3072), np.uint8),
             'ids': [np.int64(7), np.int64(8)], 'labels': [np.uint8(1), np.int32(2)]}
  path = tmp_path / 'ok.pkl'
  write_pickle(path, content, protocol)
  loaded = safe_load(path)
  assert loaded['empty'] == b'' and loaded['array'].shape == (0, 3072)
  assert loaded['ids'] == [7, 8] and isinstance(loaded['ids'][0], np.int64)
  assert loaded['labels'] == [1, 2]


def test_empty_bytes_through_codecs(tmp_path):
  path = tmp_path / 'empty.pkl'
  path.write_bytes(craft(G('_codecs.encode')('', 'latin1')))
  assert safe_load(path) == b''
  path.write_bytes(craft(G('builtins.bytes')()))
  assert safe_load(path) == b''


def test_official_globals_are_allowed(tmp_path):
  """A Python 2 stream: numpy.core.multiarray._reconstruct, ndarray, dtype, str rawdata."""
  payload = (b'\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85'
             b'U\x01b\x87Rq\x03(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R'
             b'(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\x03'
             b'\x04\x05tb.')
  path = tmp_path / 'py2.pkl'
  path.write_bytes(payload)
  np.testing.assert_array_equal(safe_load(path), np.arange(6, dtype=np.uint8).reshape(2, 3))


@pytest.mark.parametrize('content', [b'', b'\x80\x02}q\x00(U\x04data', b'hello world',
                                     b'\x80\x05\xff\xff'])
def test_garbage_and_truncated_streams(tmp_path, content):
  path = tmp_path / 'bad.pkl'
  path.write_bytes(content)
  with pytest.raises(DataError, match='truncated or not valid') as info:
    safe_load(path)
  assert '\n' not in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    safe_load(tmp_path / 'nope.pkl')
  with pytest.raises(DataError, match='is a folder'):
    safe_load(tmp_path)
