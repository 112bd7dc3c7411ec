"""Stopping cleanly on SIGINT (Ctrl-C), SIGTERM (a scheduler taking the node back) or SIGHUP.

The first signal only asks, and is acknowledged at once on stderr: the loop stops after the step
in flight, saves, releases the workdir and exits 75 (errors.Interrupted), and the same command
resumes. A second signal exits
at once (128 + its number). Python runs signal handlers only between bytecodes of the main
thread, which may sit in XLA for minutes (compiling, waiting on the device): the C-level handler
also writes each signal's number to a pipe, and a watcher thread acts on it at once.
"""
import os
import signal
import threading

from flax_seresnet import streams

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
  """`with StopRequest() as stop:` ... `stop.requested` (the first signal's name, or None)."""

  def __init__(self, doing: str = 'stopping at the next safe point'):
    self.requested = None
    self.doing = doing  # what the acknowledgement says happens next; a mode may set its own
    self._saved = None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # only the main thread may install handlers: no stop on signals then
    read, write = os.pipe()
    os.set_blocking(write, False)
    self._fds = (read, write)
    # A signal ignored by whoever started us stays ignored (nohup's SIGHUP, a background job's
    # SIGINT).
    self._saved = {s: signal.signal(s, lambda *_: None) for s in SIGNALS
                   if signal.getsignal(s) is not signal.SIG_IGN}
    self._old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, args=(read,), daemon=True).start()
    return self

  def _watch(self, fd: int):
    while data := os.read(fd, 1):  # b'' once __exit__ closes the writing end
      number = data[0]
      if number not in SIGNALS:
        continue
      if self.requested:  # the second signal: no more waiting
        _say(f'stopped at once by a second signal ({signal.Signals(number).name}); the newest '
             'checkpoint is intact')
        os._exit(128 + number)  # pylint: disable=protected-access
      self.requested = signal.Signals(number).name
      _say(f'{self.requested} received: {self.doing}; a second signal stops at once.')
    os.close(fd)

  def __exit__(self, *exc):
    if self._saved is None:
      return
    signal.set_wakeup_fd(self._old_fd)
    for s, handler in self._saved.items():
      signal.signal(s, handler)
    os.close(self._fds[1])
    self._saved = None


def _say(line: str):
  """One line on stderr (and in run.log) from the watcher thread; a closed stderr (a `| tee`
  that Ctrl-C ended) changes nothing."""
  try:
    streams.say(line)
  except (OSError, ValueError):
    pass


NEVER = StopRequest()  # for callers that install no handlers: never requested
