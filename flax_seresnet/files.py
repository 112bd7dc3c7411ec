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
RUN_FILES = ('.lock', 'run.log', 'config.json', 'metrics.jsonl', 'curves.png', 'checkpoints',
             'tensorboard', 'damaged_checkpoints')


def resolve_output(path: str, what: str = '--output') -> str:
  """The file an output `path` writes: `path` itself, or the real target of a link (a link is
  never replaced by the file written). A link to something that is not a regular file or a
  folder (a pipe, a terminal, a device: /dev/stdout) is refused. Resolve /dev/stdout before
  fd 1 changes (main.results_stream): it names whatever fd 1 is at the time."""
  if not os.path.islink(path):
    return path
  try:
    info = os.stat(path)
  except OSError:  # a dangling link: its target is created, as a shell's > does
    return os.path.realpath(path)
  if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
    raise UserError(f'{what} {path} is not a regular file (a link to a pipe, terminal, device '
                    'or FIFO): give the path of a file to write.')
  return os.path.realpath(path)


def _same_file(a: str, b: str) -> bool:
  """Whether a and b are one file: by their real paths, or (hard links, bind mounts) by their
  device and inode."""
  if os.path.realpath(a) == os.path.realpath(b):
    return True
  try:
    return os.path.samefile(a, b)
  except OSError:
    return False


def check_target(path: str, what: str, protect=(), workdir=None, follow_link=False) -> None:
  """Refuses a target that is not a regular file, is one of `protect` (an input of the run),
  or is a file of the run in `workdir`. With `follow_link` (a path the user named) a link's
  target is the one checked; else a link is what gets replaced."""
  target = resolve_output(path, what) if follow_link else path
  if os.path.isdir(target) or (os.path.exists(target) and not os.path.isfile(target)):
    raise UserError(f'{what} {path} is not a regular file (a folder, a device or a FIFO): give '
                    'the path of a file to write.')
  for other in protect:
    if other and os.path.lexists(other) and _same_file(other, target):
      raise UserError(f'{what} {path} is also the input {other}: give another path; an input '
                      'is never written over.')
  if workdir:
    real = os.path.realpath(target)
    inside = os.path.relpath(real, os.path.realpath(workdir)).split(os.sep)
    if inside[0] in RUN_FILES:
      raise UserError(f'{what} {path} is a file of the run in {workdir}: give another path.')


def write_file(path: str, content, what: str = 'output', protect=(), workdir=None,
               follow_link=False) -> None:
  """Writes `content` (str or bytes) to `path` atomically; UserError in one line on failure.
  A link there is replaced by the file (a run's own files never write through a planted
  link), or, with `follow_link` (a path the user named, such as --output), its target is
  written and the link stays."""
  check_target(path, what, protect, workdir, follow_link)
  if follow_link:
    path = resolve_output(path, what)  # written beside the real target
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    with os.fdopen(fd, 'wb') as f:
      os.fchmod(fd, 0o644)
      # A file name that is not UTF-8 (in a CSV) is written as the bytes it is.
      f.write(content.encode(errors='surrogateescape') if isinstance(content, str) else content)
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

  def remove_if_unused(self):
    """Removes the lock file (still held) of a workdir that holds no checkpoints."""
    if not os.path.exists(os.path.join(os.path.dirname(self.path), 'checkpoints')):
      try:
        os.unlink(self.path)
      except OSError:
        pass


def remove_stale_temporaries(folder: str, names) -> None:
  """Removes the temporary files (`.NAME.XXXX.tmp`) that a killed writer of `names` left in
  `folder`; call it only while holding the folder (the workdir lock): no writer is running."""
  try:
    entries = os.listdir(folder)
  except OSError:
    return
  for entry in entries:
    if entry.endswith('.tmp') and any(entry.startswith(f'.{name}.') for name in names):
      try:
        os.unlink(os.path.join(folder, entry))
      except OSError:
        pass


def check_output_folder(path: str, what: str) -> None:
  """Refuses, before any work, an output whose folder does not exist or is not a folder."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise UserError(f'{what} {path}: its folder {folder} does not exist (or is not a folder): '
                    'create it, or give another path.')
