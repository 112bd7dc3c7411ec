"""What a run shows while it trains, and how far the host runs ahead of the device.

`Pace` times the finished steps: the early estimate of the epoch and of the run, and the lead
(how many dispatched steps may wait on the device). A lead of about a second of work keeps the
device busy on an accelerator (many fast steps) and lets a stop wait at most about one step on a
CPU (a few slow ones). `EpochBar` is the epoch's tqdm bar, with the loss and accuracy of the
finished steps, computed on the host: a device computation would queue behind the steps in flight
and stall the loop for the whole lead.
"""
import math
import time
from typing import Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

SUM_KEYS = ('loss_sum', 'correct', 'count')
MAX_LEAD = 8      # steps in flight, at most
LEAD_S = 1.0      # ... and about this much work
WARMUP_STEPS = 3  # the first runs of a compiled step are slower (XLA:CPU): not timed
TIMED_STEPS = 3   # then the lead is decided from this many steps, at the same step everywhere
ESTIMATE_AFTER_S = 10.0  # or the estimate comes after this long, if sooner


def mean_metrics(sums) -> dict:
  """Mean loss and accuracy (%) of a list of metric sums (device or host arrays, or lists of
  floats in SUM_KEYS order), added up on the host."""
  if not sums:
    return {'loss': math.nan, 'accuracy': math.nan}
  host = jax.device_get(list(sums))
  totals = {k: float(np.sum([np.sum(s[k]) for s in host])) for k in SUM_KEYS}
  return {'loss': totals['loss_sum'] / totals['count'],
          'accuracy': 100.0 * totals['correct'] / totals['count']}


def lead_for(seconds_per_step: float) -> int:
  """Steps in flight worth about LEAD_S of work: 0 for steps slower than that."""
  return max(0, min(MAX_LEAD, int(LEAD_S / max(seconds_per_step, 1e-9))))


class Pace:
  """Call `finished()` each time one more step is known to be done.

  `agree(lead)` turns this process's proposal into the run's lead (several processes must use
  the same one: they stop at the same step); `on_estimate(seconds_per_step)` is called once.
  """

  def __init__(self, agree: Callable[[int], int] = lambda lead: lead,
               on_estimate: Callable[[float], None] = lambda s: None):
    self.lead, self.seconds_per_step = 1, None
    self._agree, self._on_estimate = agree, on_estimate
    self._count, self._start, self._estimated = 0, None, False

  def finished(self) -> None:
    self._count += 1
    now = time.perf_counter()
    if self._count == WARMUP_STEPS:
      self._start = now
      return
    if self._start is None or self._count < WARMUP_STEPS:
      return
    self.seconds_per_step = (now - self._start) / (self._count - WARMUP_STEPS)
    if self._count == WARMUP_STEPS + TIMED_STEPS:
      self.lead = self._agree(lead_for(self.seconds_per_step))
    if not self._estimated and (self._count >= WARMUP_STEPS + TIMED_STEPS
                                or now - self._start > ESTIMATE_AFTER_S):
      self._estimated = True
      self._on_estimate(self.seconds_per_step)


class EpochBar:
  """The epoch's progress bar (on a terminal, when enabled), with the loss and accuracy of the
  steps finished since the last refresh, about every second."""

  def __init__(self, total: int, done: int, description: str, enabled: bool):
    self.bar = tqdm(total=total, initial=done, desc=description, leave=False, mininterval=1.0,
                    disable=None if enabled else True, dynamic_ncols=True)
    self._shown, self._last = done, time.perf_counter()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.bar.close()

  def dispatched(self):
    self.bar.update()

  def show(self, sums: list, finished: int):
    """The steps `sums[:finished]` of the epoch are done: shows the means of those not shown."""
    now = time.perf_counter()
    if self.bar.disable or now - self._last < self.bar.mininterval:
      return
    window = mean_metrics(sums[self._shown:finished])
    self.bar.set_postfix(loss=f"{window['loss']:.3f}", acc=f"{window['accuracy']:.1f}",
                         refresh=False)
    self._shown, self._last = finished, now


def duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min' if hours else f'{minutes} min {seconds:02d} s'


def estimate_line(seconds_per_step: float, steps_per_epoch: int, steps_left: int,
                  cpu_note: Optional[str]) -> str:
  total = seconds_per_step * steps_left
  return (f'about {seconds_per_step:.3g} s a step: {duration(seconds_per_step * steps_per_epoch)}'
          f' for this epoch, {duration(total)} of training for this run'
          f'{"; " + cpu_note if cpu_note else "."}')
