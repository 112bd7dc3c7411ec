"""main.py with a marker at the moment a signal test aims at, held there for a while:

  python tests/cli_probe.py MOMENT [main.py flags]     MOMENT: save, eval, export or none

prints `PROBE <moment> pid=<its pid>` on stderr when a checkpoint save (an evaluation, the
writing of one file of an export) starts, then sleeps for 2 s inside it (not an export's), so
that a signal sent on seeing the marker arrives in the middle of it.
With PROBE_HOLD=N:PATH the N-th such moment waits until PATH exists instead (a test that acts
inside it, however slow the machine). PROBE_SLOW_CLOSE=S makes process 1 of a distributed run
S seconds late at its end (a peer still busy when process 0 is done).
"""
import os
import pathlib
import runpy
import signal
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def hold(module, name, moment, pause=2.0):
  original, count = getattr(module, name), [0]
  at, _, release = os.environ.get('PROBE_HOLD', '0:').partition(':')

  def held(*args, **kwargs):
    count[0] += 1
    print(f'PROBE {moment} pid={os.getpid()}', file=sys.stderr, flush=True)
    if count[0] == int(at):
      while not os.path.exists(release):
        time.sleep(0.05)
    else:
      time.sleep(pause)
    return original(*args, **kwargs)
  setattr(module, name, held)


def main():
  moment, *flags = sys.argv[1:]
  # As started from a terminal: a non-interactive shell or CI may start us with SIGINT ignored,
  # and main.py keeps an ignored signal ignored.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  if os.environ.get('PROBE_IGNORE'):  # as nohup starts a command: that signal ignored
    signal.signal(getattr(signal, os.environ['PROBE_IGNORE']), signal.SIG_IGN)
  from flax_seresnet import checkpointing, export, inference, train  # noqa: F401
  if moment == 'save':
    hold(checkpointing.Checkpoints, 'save', moment)
  elif moment == 'export':
    hold(export, '_write', moment, pause=0)  # only the held file matters
  elif moment == 'eval':
    hold(train.inference, 'run_batches', moment)
  if os.environ.get('PROBE_SLOW_CLOSE'):
    from flax_seresnet import parallel
    close = parallel.PeerWatch.close

    def slow_close(self, *args, **kwargs):
      time.sleep(float(os.environ['PROBE_SLOW_CLOSE']) if self.me == 1 else 0)
      return close(self, *args, **kwargs)
    parallel.PeerWatch.close = slow_close
  sys.argv = [str(REPO / 'main.py'), *flags]
  runpy.run_path(str(REPO / 'main.py'), run_name='__main__')


if __name__ == '__main__':
  main()
