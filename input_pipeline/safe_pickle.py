"""Loading untrusted pickles (dataset files, PyTorch .pth) without running code or blowing up.

A pickle is a program: GLOBAL imports anything, REDUCE calls it; even numpy's rebuilders make
object arrays of forged pointers, or gigabytes from a few bytes. Here the only globals are
stand-ins for numpy's dtype, array and scalar rebuilders (plain numeric dtypes, arrays only from
bytes present), and the result is walked with a budget (the file size) and a depth limit."""
import codecs
import io
import os
import pickle
import re
import zipfile
from typing import Any

import numpy as np

from input_pipeline.errors import DataError, one_line
from input_pipeline.files import read_file

_NUMERIC = frozenset('b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8'.split())  # numpy's spelling in pickles
_MAX_DEPTH = 32


class _Refused(pickle.UnpicklingError):
  """The file asks for something outside the allow-list; the message says what."""


class _Dtype:
  """Stands for numpy.dtype(spec, align, copy) and its BUILD state: plain numeric dtypes only."""

  def __init__(self, spec: Any, align: Any = False, unused_copy: Any = False):
    spec = spec.decode('latin-1') if isinstance(spec, bytes) else spec  # Python 2 str
    if align or spec not in _NUMERIC:
      raise _Refused(f'asks for numpy.dtype({spec!r:.40}, align={align!r:.9}) (only plain '
                     'bool, int, uint and float dtypes are allowed)')
    self.value = np.dtype(spec)

  def __setstate__(self, state: Any) -> None:
    # numpy writes (3, byte order, None, None, None, -1, -1, 0) for these dtypes; any other
    # state adds fields, a subarray or flags (such as "holds Python objects").
    if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3 or
        state[2:] != (None, None, None, -1, -1, 0)):
      raise _Refused('asks for a numpy.dtype with fields, a subarray, flags or metadata')
    order = state[1].decode('latin-1') if isinstance(state[1], bytes) else state[1]
    self.value = self.value.newbyteorder(order)  # any byte order: all are harmless


def _array(raw: Any, dtype: Any, shape: Any, order: Any = 'C', axis_order: Any = None):
  """numpy's protocol-5 rebuilder `_frombuffer`: only as many items as `raw` holds bytes."""
  if not isinstance(dtype, _Dtype):
    raise _Refused(f'asks for an array or scalar of {type(dtype).__name__}')
  array = np.frombuffer(raw, dtype.value)
  if order == 'K' and axis_order is not None:  # numpy 2's non-contiguous layouts
    return array.reshape(shape).transpose(axis_order)
  return array.reshape(shape, order=order)


class _Array:
  """Stands for numpy's `_reconstruct(ndarray, (0,), 'b')`; BUILD's state gives all its data."""
  value = None

  def __setstate__(self, state: Any) -> None:
    *_, shape, dtype, fortran, raw = state  # (version,) shape, dtype, is_fortran, rawdata
    self.value = _array(raw, dtype, shape, 'F' if fortran else 'C')


def _latin1_encode(text: str, encoding: str) -> bytes:
  # Protocol 2 stores bytes as _codecs.encode(str, 'latin1'); other codecs import modules.
  if encoding not in ('latin1', 'latin-1'):
    raise _Refused(f'asks for _codecs.encode({encoding!r:.40}) (only latin-1 is allowed)')
  return codecs.encode(text, 'latin-1')


_ALLOWED = {
    ('numpy', 'dtype'): _Dtype,
    ('numpy', 'ndarray'): None,  # only ever an argument of _reconstruct: never callable
    ('_codecs', 'encode'): _latin1_encode,
    # Protocol 2 writes b'' as bytes(): no argument, so never bytes(10**10).
    **{(builtins, 'bytes'): lambda: b'' for builtins in ('__builtin__', 'builtins')},
    **{(f'numpy.{core}.{module}', name): function for core in ('core', '_core')
       for module, name, function in (
           ('multiarray', '_reconstruct', lambda *_: _Array()),
           ('multiarray', 'scalar', lambda dtype, data: _array(data, dtype, ())[()]),  # a number
           ('numeric', '_frombuffer', _array))},
}
# For torch.load: the original training script saves numpy.int64 values in its config.
_TORCH_ALLOWED = [(function, f'{module}.{name}') for (module, name), function in _ALLOWED.items()
                  if name in ('scalar', 'dtype')]


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """pickle's pure-Python unpickler, restricted. (Its memo is a dict: the C unpickler allocates
  and zeroes a table as long as the largest memo index a file names.)"""
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def find_class(self, module: str, name: str) -> Any:
    # Also called for copyreg's extension codes (EXT1/2/4), before anything is imported.
    if (module, name) not in _ALLOWED:
      raise _Refused(f'asks for {module}.{name}')
    return _ALLOWED[module, name]

  def _build(self) -> None:  # otherwise BUILD sets attributes of anything, e.g. our functions
    if not isinstance(self.stack[-2], (_Array, _Dtype)):
      raise _Refused(f'asks to set the state of a {type(self.stack[-2]).__name__}')
    self.load_build()

  def _strings(self, keys: list[Any]) -> None:  # n ints of one hash cost n**2 to insert
    if not all(isinstance(key, (str, bytes)) for key in keys):  # their hashes are salted
      raise _Refused('has dict keys or set items that are not strings')

  dispatch[pickle.BUILD[0]] = _build
  # pickle's own BYTEARRAY8 allocates the size a file declares before reading it.
  dispatch[pickle.BYTEARRAY8[0]] = lambda self: self.append(
      bytearray(self.read(int.from_bytes(self.read(8), 'little'))))
  dispatch[pickle.SETITEM[0]] = lambda self: self._strings(self.stack[-2:-1]) or self.load_setitem()
  dispatch[pickle.SETITEMS[0]] = lambda self: self._strings(self.stack[::2]) or self.load_setitems()
  dispatch[pickle.DICT[0]] = lambda self: self._strings(self.stack[::2]) or self.load_dict()
  dispatch[pickle.ADDITEMS[0]] = lambda self: self._strings(self.stack) or self.load_additems()
  dispatch[pickle.FROZENSET[0]] = lambda self: self._strings(self.stack) or self.load_frozenset()


def _finish(root: Any, size: int) -> Any:
  """Swaps stand-ins for numpy objects; refuses nesting too deep or too shared for `size` bytes."""
  budget = size + 100  # a legitimate file spends at least one byte per object

  def visit(obj: Any, depth: int) -> Any:
    nonlocal budget
    budget -= 1
    if budget < 0 or depth > _MAX_DEPTH:
      raise _Refused(f'nests deeper than {_MAX_DEPTH} levels or shares objects more than its '
                     f'{size} bytes allow')
    if isinstance(obj, (_Array, _Dtype)):
      return obj.value
    if isinstance(obj, list):
      obj[:] = [visit(item, depth + 1) for item in obj]
    elif isinstance(obj, dict):  # in place: keeps OrderedDict and shared references
      items = [(visit(k, depth + 1), visit(v, depth + 1)) for k, v in obj.items()]
      obj.clear()
      obj.update(items)
    elif type(obj) in (tuple, set, frozenset):
      return type(obj)(visit(item, depth + 1) for item in obj)
    return obj

  return visit(root, 0)


def _problem(e: BaseException) -> str:
  """What is wrong with a file's content and what to do, for a one-line message."""
  if isinstance(e, _Refused):
    return (f'is refused: it {one_line(e)}; it may be malicious: do not use it, replace it with '
            'a trusted copy')
  detail = one_line(re.sub(r'\x1b\[[0-9;]*m', '', str(e)))  # torch's ANSI bold
  if 'weights_only' in detail:  # torch's advice to load unsafely: never pass it on
    detail = '...'
  return (f'is truncated or not valid ({type(e).__name__}: {detail}): replace it with an '
          'intact copy')


def safe_load(path: str | os.PathLike[str], *, what: str = 'dataset file') -> Any:
  """Unpickles `path` (Python 2 strings as bytes); DataError on anything wrong or not allowed."""
  data = read_file(path, what, 'pickle')
  try:
    return _finish(_Unpickler(io.BytesIO(data), encoding='bytes').load(), len(data))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{what} {path} {_problem(e)}') from None


def load_torch_file(path: str | os.PathLike[str]) -> Any:
  """torch.load(path, map_location='cpu', weights_only=True) plus numpy scalars, a zip's sizes
  checked first; DataError on anything wrong or not allowed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f'reading the PyTorch checkpoint {path} needs PyTorch: pip install '
                    "'flax-seresnet[torch]' (on a CPU: pip install torch==2.13.0)") from None
  what = 'PyTorch checkpoint'
  data = read_file(path, what, 'model')
  try:
    if zipfile.is_zipfile(io.BytesIO(data)):  # torch.save's format; older files are a pickle
      with zipfile.ZipFile(io.BytesIO(data)) as archive:
        declared = sum(member.file_size for member in archive.infolist())
      if declared > len(data):  # torch.save does not compress
        raise _Refused(f'declares {declared} bytes of content in {len(data)} bytes (a zip bomb?)')
    with torch.serialization.safe_globals(_TORCH_ALLOWED):
      return _finish(torch.load(io.BytesIO(data), map_location='cpu', weights_only=True),
                     len(data))
  except Exception as e:  # pylint: disable=broad-except
    # torch re-raises the unpickler's error as one that advises weights_only=False.
    cause = e.__context__ if isinstance(e, pickle.UnpicklingError) and e.__context__ else e
    if not isinstance(cause, _Refused) and (match := re.search(r'GLOBAL (\S+)', str(cause))):
      cause = _Refused(f'asks for {match[1]}')
    raise DataError(f'{what} {path} {_problem(cause)}') from None
