"""The files a run writes: whole or not at all, to regular files only; and the workdir lock.

`write_file` writes into a unique temporary file beside the target (created exclusively, so no
link planted there can redirect it) and renames it over the target: a reader never sees half a
file, and a failed write leaves nothing behind. Targets that are not regular files (devices,
FIFOs, folders) and the files a run keeps in its workdir are refused.
"""
import errno
import fcntl
import os
import stat
import tempfile

from flax_seresnet import storage
from flax_seresnet.errors import UserError

# A workdir's own files and folders: never an --output.
RUN_FILES = ('.lock', 'config.json', 'metrics.jsonl', 'curves.png', 'checkpoints', 'tensorboard',
             'damaged_checkpoints')


def check_target(path: str, what: str, protect=(), workdir=None) -> None:
  """Refuses a target that is not a regular file, is one of `protect`, or is a file of the
  run in `workdir`."""
  if os.path.isdir(path) or (os.path.exists(path) and not os.path.isfile(path)):
    raise UserError(f'{what} {path} is not a regular file (a folder, a device or a FIFO): give '
                    'the path of a file to write.')
  real = os.path.realpath(path)
  for other in protect:
    if other and os.path.exists(other) and os.path.realpath(other) == real:
      raise UserError(f'{what} {path} is also the input {other}: give another path.')
  if workdir:
    inside = os.path.relpath(real, os.path.realpath(workdir)).split(os.sep)
    if inside[0] in RUN_FILES:
      raise UserError(f'{what} {path} is a file of the run in {workdir}: give another path.')


def write_file(path: str, content, what: str = 'output', protect=(), workdir=None) -> None:
  """Writes `content` (str or bytes) to `path` atomically; UserError in one line on failure."""
  check_target(path, what, protect, workdir)
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      os.fchmod(fd, 0o644)
      f.write(content.encode() if isinstance(content, str) else content)
      f.flush()
      os.fsync(fd)
    os.replace(tmp, path)
  except OSError as e:
    if tmp and os.path.lexists(tmp):
      os.remove(tmp)
    raise UserError(f'could not write {what} {path} {storage.describe(e)}.') from None


def append_line(path: str, line: str, what: str) -> None:
  """Appends one line to the regular file `path` (created if missing)."""
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o644)
    with os.fdopen(fd, 'a') as f:
      if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, 'not a regular file')
      f.write(line + '\n')
  except OSError as e:
    raise UserError(f'could not write {what} {path} {storage.describe(e)}, then rerun the same '
                    'command to resume.') from None


class WorkdirLock:
  """One workdir, one trainer: an exclusive flock on <workdir>/.lock. The kernel releases it
  when its holder dies, so the stale lock of a dead process is simply taken over. A .lock that
  is a link or not a regular file is refused, never followed."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
      what = ('is a link: remove it' if e.errno == errno.ELOOP else
              f'cannot be written {storage.describe(e)}')
      raise UserError(f'--workdir {workdir}: {self.path} {what}.') from None
    self._file = os.fdopen(fd, 'r+')
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      self._file.close()
      raise UserError(f'--workdir {workdir}: {self.path} is not a regular file: remove it.')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      holder = self._file.read(32).strip() or 'unknown'
      self._file.close()
      raise UserError(f'--workdir {workdir} is in use by another trainer (pid {holder}): wait '
                      'for it to finish, or use another --workdir.') from None
    try:  # unbuffered: a failed write must not fail again when the file is closed
      os.ftruncate(fd, 0)
      os.pwrite(fd, str(os.getpid()).encode(), 0)
    except OSError as e:
      self._file.close()
      raise UserError(f'--workdir {workdir}: {self.path} cannot be written '
                      f'{storage.describe(e)}.') from None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()

  def release(self):
    self._file.close()  # closing releases the flock
