"""Reading untrusted paths: regular files only, never more bytes than they hold.

A FIFO would block its reader forever and /dev/zero never ends, so a path is opened without
blocking, checked to be a regular file, and read for exactly the size it has."""
import errno
import os
import stat

from input_pipeline.errors import DataError, one_line


def os_problem(e: OSError) -> str:
  """What is wrong with a path and what to do, for a one-line message after its name."""
  if e.errno == errno.ENOENT:
    return 'does not exist: fix the path'
  if e.errno == errno.EISDIR:
    return 'is a folder, not a file: fix the path'
  return f'cannot be read ({e.strerror or one_line(e)}): check the path and its permissions'


def read_file(path: str | os.PathLike[str], what: str) -> bytes:
  """The bytes of the regular file `path`; DataError naming `what` and `path` otherwise."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, 'rb') as f:
      info = os.fstat(fd)
      if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, 'is a folder')
      if not stat.S_ISREG(info.st_mode):
        raise DataError(f'{what} {path} is not a regular file (a FIFO, a device or a socket): '
                        'only regular files are read; copy it into one')
      return f.read(info.st_size)
  except OSError as e:
    raise DataError(f'{what} {path} {os_problem(e)}') from None
