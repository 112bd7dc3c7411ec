"""Unpickling of dataset files that cannot run code.

A pickle is a program: its GLOBAL / STACK_GLOBAL opcodes import any attribute
of any module and its REDUCE opcode calls it, so loading an untrusted pickle
with `pickle.load` can run arbitrary commands. The CIFAR-10 batches only need
numpy to rebuild one uint8 array per file, so `SafeUnpickler` resolves exactly
those globals and refuses everything else before it is imported or called.

Traced on the official files (protocol 2, written by Python 2):
`numpy.core.multiarray._reconstruct`, `numpy.ndarray` and `numpy.dtype`.
Also allowed, for pickles that users write themselves with Python 3:
`_codecs.encode` (protocol 2 stores an array's bytes as a latin-1 `str`;
restricted to latin-1 here), numpy 2's `numpy._core` spelling of the same
functions, and `numpy.(_)core.numeric._frombuffer` (protocol 5, i.e.
`pickle.HIGHEST_PROTOCOL`). None of these can import modules or run commands.
"""
import codecs
import os
import pickle
from typing import Any, Callable

import numpy as np

from flax_seresnet.errors import DataError, one_line

# numpy 2 renamed numpy.core to numpy._core; numpy 1.x only has numpy.core.
# Resolving the functions here (rather than via import by name at load time)
# also avoids numpy 2's DeprecationWarning for importing numpy.core.
try:
  from numpy._core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top
  from numpy._core import numeric as _numeric  # pylint: disable=g-import-not-at-top
except ImportError:  # numpy < 2
  from numpy.core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top
  from numpy.core import numeric as _numeric  # pylint: disable=g-import-not-at-top


_LATIN1_NAMES = frozenset({'latin1', 'latin-1', 'iso8859-1', 'iso-8859-1', 'l1'})


def _latin1_encode(obj: str, encoding: str = 'utf-8', errors: str = 'strict') -> bytes:
  """`_codecs.encode` limited to latin-1, the only codec numpy's pickles use.

  Other codecs are refused so that a crafted file cannot pick an arbitrary
  codec (codec lookup imports modules from the `encodings` package).
  """
  # Compare spellings instead of calling codecs.lookup, which would import.
  if not isinstance(encoding, str) or encoding.lower().replace('_', '-') not in _LATIN1_NAMES:
    raise pickle.UnpicklingError(
        f'refused _codecs.encode with codec {encoding!r} (only latin-1 is allowed)')
  return codecs.encode(obj, 'latin-1', errors)


# (module, name) -> the object the unpickler hands back for it.
# pylint: disable=protected-access
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy.core.numeric', '_frombuffer'): _numeric._frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _numeric._frombuffer,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_encode,
}
# pylint: enable=protected-access


class RefusedGlobal(pickle.UnpicklingError):
  """A pickle asked for a global outside the allow-list."""

  def __init__(self, module: str, name: str):
    super().__init__(f'{module}.{name}')
    self.module = module
    self.name = name


class SafeUnpickler(pickle.Unpickler):
  """A `pickle.Unpickler` that resolves only the numpy globals in `_ALLOWED`."""

  def find_class(self, module: str, name: str) -> Any:
    # Called for GLOBAL, STACK_GLOBAL, INST, OBJ and the EXT (copyreg) opcodes,
    # before anything is imported, so refusing here stops the attack early.
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise RefusedGlobal(module, name) from None
    except TypeError:  # unhashable module/name from a malformed stream
      raise RefusedGlobal(repr(module), repr(name)) from None

  def persistent_load(self, pid: Any) -> Any:
    # Persistent IDs are never part of a dataset file.
    raise pickle.UnpicklingError('persistent IDs are not allowed')


def safe_load(path: str | os.PathLike[str], *, what: str = 'dataset file') -> Any:
  """Loads the pickle at `path` with `SafeUnpickler`.

  Args:
    path: the file to read.
    what: how error messages describe the file, e.g. 'CIFAR-10 batch'.

  Returns:
    The unpickled object. Python 2 strings come back as `bytes`
    (`encoding='bytes'`), as the official CIFAR-10 files need.

  Raises:
    DataError: the file is missing or unreadable, asks for a global that is not
      allowed, or is truncated or otherwise not a valid pickle.
  """
  path = os.fspath(path)
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    raise DataError(f'{what} {path} does not exist: put the file there or fix the path') from None
  except IsADirectoryError:
    raise DataError(f'{what} {path} is a folder, not a file: fix the path') from None
  except OSError as e:
    raise DataError(f'cannot read {what} {path} ({one_line(e)}): check the path and its '
                    'permissions') from None
  try:
    # Unpickling straight from the file (not from f.read()) saves one copy of
    # the ~30 MB pixel string per batch.
    with f:
      return SafeUnpickler(f, encoding='bytes').load()
  except RefusedGlobal as e:
    raise DataError(
        f'{what} {path} asks to load {e.module}.{e.name}, which is refused because only numpy '
        'arrays are allowed in dataset pickles: the file is not a CIFAR-10-style pickle and may be '
        'malicious; do not use it, replace it with the official file') from None
  except Exception as e:  # pylint: disable=broad-except
    # Truncated or garbage input surfaces as many exception types
    # (EOFError, UnpicklingError, ValueError, KeyError, IndexError, ...).
    raise DataError(
        f'{what} {path} is truncated or not a valid pickle ({type(e).__name__}: {one_line(e)}): '
        'replace it with an intact copy') from None
