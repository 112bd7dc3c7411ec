"""One reading of what a disk, a mount or a limit refused, and what to do about it.

Every writer (files, checkpointing, records, export) reports a failed write through `describe`:
the system's own words and one piece of advice for each cause. orbax and tensorstore wrap the
OSError in ValueErrors and RuntimeErrors whose text names the errno (`[os_error_code='27']`) or
only an absl status; asyncio wraps them again. Their background threads also report the same
failure on their own (orbax's log, asyncio's handlers, thread and garbage-collection hooks):
`held_reports` and `quiet_background` keep those off the terminal, where the main thread says
it in one line.
"""
import contextlib
import errno
import logging
import os
import re
import sys
import threading
import warnings
from typing import NamedTuple, Optional

ADVICE = {
    errno.ENOSPC: 'free some space',
    errno.EDQUOT: 'free some space or raise the disk quota',
    errno.EFBIG: 'raise the file-size limit (ulimit -f)',
    errno.ENFILE: 'the system has too many open files: close some programs',  # before EMFILE,
    errno.EMFILE: 'raise the open-files limit (ulimit -n)',  # whose words begin ENFILE's
    errno.EROFS: 'the folder is read-only: choose another',
    errno.EACCES: 'fix its permissions or choose another folder',
    errno.EPERM: 'fix its permissions or choose another folder',
    errno.ENOTDIR: 'a part of the path is a file, not a folder: choose another path',
    errno.EEXIST: 'the path is a file, not a folder: move it away or choose another path',
}
# What tensorstore and orbax write instead of an errno; a failed write's status alone when
# nothing else says (not an out-of-memory error's, or a read past the end of a cut file).
_CODE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")
_TEXTS = {code: os.strerror(code) for code in ADVICE}
_STATUS = (('RESOURCE_EXHAUSTED', errno.ENOSPC), ('OUT_OF_RANGE', errno.EFBIG))
_WRITING = re.compile(r'(Error|Failed) writing')


class Problem(NamedTuple):
  code: int
  text: str  # the system's words: 'No space left on device'
  advice: str

  def __str__(self):
    return f'({self.text}): {self.advice}'


def _code_in(e: BaseException) -> Optional[int]:
  if isinstance(e, OSError) and e.errno in ADVICE:
    return e.errno
  text = str(e)
  for match in _CODE.finditer(text):
    code = int(match.group(1) or match.group(2))
    if code in ADVICE:
      return code
  for code, words in _TEXTS.items():
    if words in text:
      return code
  if not _WRITING.search(text):
    return None
  return next((code for status, code in _STATUS if status in text), None)


def problem(e: BaseException) -> Optional[Problem]:
  """The storage failure behind `e` (through causes, contexts and exception groups), or None."""
  seen = set()
  todo = [e]
  while todo:
    e = todo.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    code = _code_in(e)
    if code is not None:
      _seen_failure()
      return Problem(code, _TEXTS[code], ADVICE[code])
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return None


def describe(e: BaseException) -> str:
  """'(the system's words): advice' for any failed write: a known cause's own advice, else
  the general one."""
  found = problem(e)
  if found:
    return str(found)
  words = (e.strerror if isinstance(e, OSError) else None) or ' '.join(str(e).split())[:300]
  return f'({words}): check that the folder exists and is writable'


# --- Other threads' reports of the same failure.
_failed = threading.Event()  # a storage failure was seen: its stragglers are dropped too
_installed = []
LOGGERS = ('absl', 'asyncio')  # orbax logs through absl


def _seen_failure():
  if not _failed.is_set():  # asyncio's coroutines the failure cut short: never awaited, said once
    warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
    _failed.set()


def _from_library(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING and 'flax_seresnet' not in record.pathname


def _is_report(record: logging.LogRecord) -> bool:
  """A library's (not this project's) error report of a storage failure."""
  if not _from_library(record):
    return False
  if _failed.is_set():  # after a storage failure, a library's error is its straggler (orbax's
    return True         # threads then meet an executor that shut down as the process ends)
  exc = record.exc_info[1] if record.exc_info else None
  return bool((exc is not None and problem(exc)) or _code_in(Exception(record.getMessage())))


def quiet_background() -> None:
  """Drops the background reports of storage failures (orbax's and asyncio's log records,
  uncaught exceptions of threads, of garbage collection and never-awaited coroutines once a
  failure was seen): the main thread reports the failure once, in one line. Idempotent."""
  if _installed:
    return
  # JAX's compilation cache is optional: a limit or a full disk there costs the next start its
  # compile time and nothing else, and the run's own writes report the failure.
  warnings.filterwarnings('ignore', 'Error writing persistent compilation cache', UserWarning)
  drop = lambda record: not _is_report(record)
  for name in LOGGERS:
    logging.getLogger(name).addFilter(drop)
  thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

  def threads(args):  # once a failure was seen, a thread's error is its straggler (orbax's
    # threads then meet an executor that shut down as the process ends)
    if not (_failed.is_set() or problem(args.exc_value)):
      thread_hook(args)

  def unraisable(args):  # e.g. an event loop that EMFILE stopped half-built, collected later
    if not (_failed.is_set() or problem(args.exc_value)):
      unraisable_hook(args)
  threading.excepthook, sys.unraisablehook = threads, unraisable
  _installed.append(True)


@contextlib.contextmanager
def held_reports():
  """Holds the libraries' warnings and errors logged meanwhile (orbax's threads report a failed
  write as they meet it, in several forms, before the main thread sees it): dropped when the
  block fails for a storage reason, which the caller then says in one line; passed on
  otherwise."""
  quiet_background()
  held = []
  keep = lambda record: not (_from_library(record) and held.append(record) is None)
  loggers = [logging.getLogger(name) for name in LOGGERS]
  for logger in loggers:
    logger.addFilter(keep)
  try:
    yield
  except BaseException as e:
    if problem(e):
      held.clear()
    raise
  finally:
    for logger in loggers:
      logger.removeFilter(keep)
    for record in held:
      logging.getLogger(record.name).handle(record)
