"""main.py with a marker at the moment a test aims at, held there until the test says so:

  PROBE_HOLD=N:PATH python tests/cli_probe.py MOMENT [main.py flags]

MOMENT: compile (the run's compilation), step (a train step, before it is dispatched), save (a
checkpoint save), eval (an evaluation), export (the writing of one file of an export) or none.
Each call prints `PROBE <moment> <count> pid=<pid>` on stderr up to the N-th, which waits until
PATH exists: a test acts at an exact point of the run, however slow or loaded the machine.
PROBE_BUG=N:P makes the N-th call raise a RuntimeError (a bug) in process P instead.
PROBE_STEP_S=S makes each train step S seconds longer. PROBE_SLOW_CLOSE=S makes process 1 of a distributed run
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


def hold(module, name, moment):
  original, count = getattr(module, name), [0]
  at, _, release = os.environ.get('PROBE_HOLD', '0:').partition(':')
  bug_at, _, bug_in = os.environ.get('PROBE_BUG', '0:0').partition(':')

  def held(*args, **kwargs):
    count[0] += 1
    if count[0] <= int(at):
      print(f'PROBE {moment} {count[0]} pid={os.getpid()}', file=sys.stderr, flush=True)
    if count[0] == int(bug_at):
      import jax
      if jax.process_index() == int(bug_in):
        raise RuntimeError(f'PROBE_BUG: a bug in process {bug_in}')
    if count[0] == int(at):
      while not os.path.exists(release):
        time.sleep(0.01)
    return original(*args, **kwargs)
  setattr(module, name, held)


def slow_steps(seconds: float):
  """Each train step takes `seconds` more on the device, as a big network's step on a CPU does:
  a host callback inside the compiled step sleeps (the host thread stays free)."""
  import jax
  import numpy as np
  from flax_seresnet import steps
  step = steps.train_step

  def slow_step(*args, **kwargs):
    state, metrics = step(*args, **kwargs)
    pause = jax.pure_callback(lambda _: (time.sleep(seconds), np.float32(0))[1],
                              jax.ShapeDtypeStruct((), np.float32), metrics['loss_sum'])
    return state, dict(metrics, loss_sum=metrics['loss_sum'] + pause)
  steps.train_step = slow_step


def main():
  moment, *flags = sys.argv[1:]
  # As started from a terminal: a non-interactive shell or CI may start us with SIGINT ignored,
  # and main.py keeps an ignored signal ignored.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  if os.environ.get('PROBE_IGNORE'):  # as nohup starts a command: that signal ignored
    signal.signal(getattr(signal, os.environ['PROBE_IGNORE']), signal.SIG_IGN)
  from flax_seresnet import checkpointing, export, inference, train  # noqa: F401
  places = {'compile': (train.Trainer, 'compile'), 'step': (train.Trainer, 'train_step'),
            'save': (checkpointing.Checkpoints, 'save'), 'eval': (train.inference, 'run_batches'),
            'export': (export, '_write')}
  if moment in places:
    hold(*places[moment], moment)
  if os.environ.get('PROBE_STEP_S'):
    slow_steps(float(os.environ['PROBE_STEP_S']))
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
