"""Where the command line's output goes: results on stdout, the log on stderr (through tqdm,
which lifts a progress bar off the line) and, for training, appended to WORKDIR/run.log.

A pipe that closes (`... 2>&1 | tee log`, and Ctrl-C ends tee too; `--list_config | head`)
changes nothing: writes to it are dropped, the run goes on to its documented exit code, and the
last line still reaches run.log.
"""
import contextlib
import errno
import logging as std_logging
import os
import stat
import sys

import tqdm

_FILE_HANDLERS = []  # the run.log handlers open now
_results = None


class _Tolerant:
  """A text stream whose writes to a closed pipe are dropped (once it breaks, the descriptor is
  pointed at /dev/null, so that no later flush, even Python's at exit, fails)."""

  def __init__(self, stream):
    self._stream = stream

  def _broken(self):
    with contextlib.suppress(OSError, ValueError):
      null = os.open(os.devnull, os.O_WRONLY)
      os.dup2(null, self._stream.fileno())
      os.close(null)

  def write(self, text):
    try:
      return self._stream.write(text)
    except BrokenPipeError:
      self._broken()
      return len(text)
    except OSError as e:
      if e.errno != errno.EPIPE:
        raise
      self._broken()
      return len(text)

  def flush(self):
    try:
      self._stream.flush()
    except (BrokenPipeError, ValueError):
      self._broken()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def tolerate_closed_pipes() -> None:
  if not isinstance(sys.stdout, _Tolerant):
    sys.stdout, sys.stderr = _Tolerant(sys.stdout), _Tolerant(sys.stderr)


def results():
  """A handle of its own on stdout for the results; stdout (fd 1) itself then points at stderr,
  so that nothing a library prints there (Gloo's connection lines, say) lands among them."""
  global _results  # pylint: disable=global-statement
  if _results is None:
    sys.stdout.flush()
    # A file name that is not UTF-8 goes out as the bytes it is (Python decoded it that way).
    _results = _Tolerant(os.fdopen(os.dup(1), 'w', buffering=1, errors='surrogateescape'))
    os.dup2(2, 1)
  return _results


def say(line: str) -> None:
  """A line of the command's own, not a log record (the last `error: ...` or `interrupted:
  ...`, a signal's acknowledgement): on stderr and in run.log."""
  for handler in _FILE_HANDLERS:
    with contextlib.suppress(OSError, ValueError):
      handler.stream.write(line + '\n')
      handler.flush()
  print(line, file=sys.stderr, flush=True)


class _BarFriendlyHandler(std_logging.Handler):
  """Writes through tqdm, which lifts a progress bar off the line and puts it back after."""

  def emit(self, record):
    try:
      tqdm.tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def _ours(record) -> bool:
  """This project's lines (INFO and up); other libraries' (orbax's above all, which logs
  through absl too) only from ERROR up."""
  record.prefix = 'warning: ' if record.levelno == std_logging.WARNING else ''
  return record.levelno >= std_logging.ERROR or any(
      part in record.pathname for part in ('flax_seresnet', 'input_pipeline', 'main.py'))


def _formatted(handler):
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(prefix)s%(message)s',
                                             '%Y-%m-%d %H:%M:%S'))
  handler.addFilter(_ours)
  return handler


def log_to_stderr() -> None:
  """The command line's log: each line with its time, on stderr."""
  logger = std_logging.getLogger('absl')
  logger.handlers, logger.propagate = [_formatted(_BarFriendlyHandler())], False
  logger.setLevel(std_logging.INFO)
  std_logging.getLogger().setLevel(std_logging.WARNING)  # e.g. jax's INFO about absent TPUs


@contextlib.contextmanager
def log_file(path: str):
  """While open, the log and the final line are also appended to the regular file `path` (its
  folder made if missing). A file that cannot be kept is skipped in silence: whatever is wrong
  with its folder is reported by what uses the folder."""
  try:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o644)
  except OSError:
    yield
    return
  stream = os.fdopen(fd, 'a', buffering=1, errors='backslashreplace')
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    stream.close()
    yield
    return
  handler = _formatted(std_logging.StreamHandler(stream))
  logger = std_logging.getLogger('absl')
  logger.addHandler(handler)
  _FILE_HANDLERS.append(handler)
  try:
    with contextlib.suppress(OSError):
      stream.write(f'--- {" ".join(sys.argv)}\n')
    yield
  finally:
    logger.removeHandler(handler)
    _FILE_HANDLERS.remove(handler)
    with contextlib.suppress(OSError):
      handler.close()
