"""The restricted unpickler refuses every global but numpy's array rebuilders."""
import copyreg
import pickle
import sys

import numpy as np
import pytest

from input_pipeline import DataError, load_cifar10, load_unlabeled
from tests.fake_data import make_batch, write_fake_cifar10, write_pickle
from input_pipeline.safe_pickle import safe_load


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
      'numpy.core.multiarray.scalar': _global_call('numpy.core.multiarray', 'scalar', 'x'),
  }


def _attack_ids():
  return list(_attacks('m'))


@pytest.mark.parametrize('attack', _attack_ids())
def test_attack_is_refused_and_runs_nothing(tmp_path, attack):
  marker = tmp_path / 'marker'
  path = tmp_path / 'evil.pkl'
  path.write_bytes(_attacks(marker)[attack])
  had_antigravity = 'antigravity' in sys.modules
  with pytest.raises(DataError) as info:
    safe_load(path)
  message = str(info.value)
  assert '\n' not in message
  assert str(path) in message
  assert attack.rsplit('.', 1)[1] in message  # names the refused global
  assert not marker.exists()
  assert ('antigravity' in sys.modules) == had_antigravity


def test_the_attacks_are_real(tmp_path):
  """Sanity check of the crafted file: plain pickle.load does run it."""
  marker = tmp_path / 'marker'
  pickle.loads(_attacks(marker)['builtins.exec'])
  assert marker.exists()


def test_attack_hidden_after_valid_array_in_a_batch(tmp_path):
  """A well-formed batch with a payload in one of its values is still refused."""
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
  assert not marker.exists()


def test_attack_in_unlabeled_file(tmp_path):
  marker = tmp_path / 'marker'
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
    payload = (b'\x80\x02\x83' + code.to_bytes(2, 'little') + b'X' +
               len(f'touch {marker}').to_bytes(4, 'little') + f'touch {marker}'.encode() +
               b'\x85R.')
    path = tmp_path / 'ext.pkl'
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r'os\.system'):
      safe_load(path)
  finally:
    copyreg.remove_extension('os', 'system', code)
  assert not marker.exists()


def test_codecs_encode_only_with_latin1(tmp_path):
  path = tmp_path / 'codec.pkl'
  path.write_bytes(_global_call('_codecs', 'encode', 'abc', 'rot13'))
  with pytest.raises(DataError, match='latin-1'):
    safe_load(path)
  path.write_bytes(_global_call('_codecs', 'encode', 'abc', 'latin1'))
  assert safe_load(path) == b'abc'


@pytest.mark.parametrize('protocol', [0, 2, 4, 5])
def test_numpy_arrays_load_in_every_protocol(tmp_path, protocol):
  """Protocol 2 uses _codecs.encode, 5 uses _frombuffer; all must load."""
  array = np.arange(24, dtype=np.uint8).reshape(2, 12)
  path = tmp_path / 'ok.pkl'
  write_pickle(path, {'data': array, 'labels': [1, 2]}, protocol=protocol)
  content = safe_load(path)
  np.testing.assert_array_equal(content['data'], array)
  assert content['labels'] == [1, 2]


def test_official_globals_are_allowed(tmp_path):
  """A Python 2 style stream: numpy.core.multiarray._reconstruct, ndarray, dtype."""
  # The opening of an official batch: _reconstruct(ndarray, (0,), 'b') then
  # __setstate__((1, (2, 3), dtype('u1'), False, bytes)).
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
  with pytest.raises(DataError, match='truncated or not a valid pickle') as info:
    safe_load(path)
  assert '\n' not in str(info.value)
  assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    safe_load(tmp_path / 'nope.pkl')
  with pytest.raises(DataError, match='is a folder'):
    safe_load(tmp_path)
