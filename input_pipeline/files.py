"""Reading untrusted paths: regular files only, never more bytes than they hold, and never more
than a bound suited to their kind.

A FIFO would block its reader forever and /dev/zero never ends, so a path is opened without
blocking, checked to be a regular file, and read for exactly the size it has. A sparse file (or
any huge one) would still be read whole into memory, so each kind of file has a bound (LIMITS,
the one place they are set) and a larger file is refused before a byte of it is read."""
import errno
import os
import stat

from input_pipeline.errors import DataError, one_line

MiB = 1 << 20
# The largest file read of each kind, with room above every real one: a CIFAR-10 batch is
# 31 MB and a 300,000-image unlabeled set (Kaggle's) 0.9 GB; the published model's checkpoint
# and export are a few MB.
LIMITS = {
    'image': 64 * MiB,  # a 24-megapixel JPEG is about 10 MB
    'list': 16 * MiB,  # a .txt list of image paths: about 200,000 lines
    'card': 1 * MiB,  # model.json
    'model': 512 * MiB,  # an exported artifact, an ONNX model, a PyTorch checkpoint
    'pickle': 1024 * MiB,  # a CIFAR-10 batch, the meta file, an unlabeled set
    'download': 1024 * MiB,  # the CIFAR-10 tarball is 163 MiB
    'array': 256 * MiB,  # a CIFAR-10-C .npy: 50,000 images, 154 MB (each is also held to its
                         # layout's size by input_pipeline/cifar10c.py)
}


def size_text(size: int) -> str:
  """`size` bytes as people read it: 8.0 GiB."""
  for unit in ('bytes', 'KiB', 'MiB', 'GiB'):
    if size < 1024 or unit == 'GiB':
      return f'{size} {unit}' if unit == 'bytes' else f'{size:.1f} {unit}'
    size /= 1024
  return ''  # not reached


def os_problem(e: OSError) -> str:
  """What is wrong with a path and what to do, for a one-line message after its name."""
  if e.errno == errno.ENOENT:
    return 'does not exist: fix the path'
  if e.errno == errno.EISDIR:
    return 'is a folder, not a file: fix the path'
  return f'cannot be read ({e.strerror or one_line(e)}): check the path and its permissions'


def read_file(path: str | os.PathLike[str], what: str, kind: str, head: int | None = None
              ) -> bytes:
  """The bytes of the regular file `path` (only its first `head` bytes when given), at most
  LIMITS[kind] of them; DataError naming `what` and `path` otherwise."""
  limit = LIMITS[kind]
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, 'rb') as f:
      info = os.fstat(fd)
      if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, 'is a folder')
      if not stat.S_ISREG(info.st_mode):
        raise DataError(f'{what} {path} is not a regular file (a FIFO, a device or a socket): '
                        'only regular files are read; copy it into one')
      if head is not None:
        return f.read(min(head, info.st_size))
      if info.st_size > limit:
        raise DataError(f'{what} {path} is {size_text(info.st_size)} ({info.st_size} bytes), '
                        f'over the {size_text(limit)} read for a file of its kind: check that '
                        'it is the right file, or give a smaller one')
      return f.read(info.st_size)
  except OSError as e:
    raise DataError(f'{what} {path} {os_problem(e)}') from None
