"""The training loop: `train_and_evaluate(config, workdir)` trains (or resumes) the run in workdir.

Data flows one way: files -> NumPy arrays (host) -> uint8 arrays replicated on the devices ->
per step only the batch's dataset indices travel -> the jitted step gathers, augments and trains
-> metric sums, fetched rarely -> records and checkpoints once per epoch, or when a signal stops
the run (at a step boundary; the resumed run then repeats the uninterrupted one bit for bit).
"""
import contextlib
import functools
import json
import math
import os
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import input_pipeline
from flax_seresnet import checkpointing, files, inference, interrupt, optim, parallel, records
from flax_seresnet import steps
from flax_seresnet import config as config_lib
from flax_seresnet.errors import CheckpointError, Interrupted, TrainingDiverged
from flax_seresnet.model import model_from_config

LEAD_STEPS = 8  # the host runs at most this many steps ahead of the device: the bar shows work done
SUM_KEYS = ('loss_sum', 'correct', 'count')
CPU_NOTE_S = 3600  # a CPU run estimated longer than this is told that the recipe wants a GPU
PLOT_EVERY_S = 60  # curves.png at periodic checkpoints at most this often (a plot takes ~0.5 s)


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min' if hours else f'{minutes} min {seconds:02d} s'


def _means(sums) -> dict:
  """Mean loss and accuracy (%) of a list of per-step metric sums (one transfer per key)."""
  totals = {k: float(jnp.stack([s[k] for s in sums]).sum()) for k in SUM_KEYS}
  return {'loss': totals['loss_sum'] / totals['count'],
          'accuracy': 100.0 * totals['correct'] / totals['count']}


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in flax.traverse_util.flatten_dict(tree).values()
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def new_meta() -> dict:
  """Where a run stands, as its checkpoints record it: `epoch` epochs done, then `epoch_step`
  steps of the next (with their metric sums), the history and the totals of the summary."""
  return {'epoch': 0, 'epoch_step': 0, 'epoch_sums': [], 'epoch_s': 0.0, 'history': [],
          'best_test_accuracy': 0.0, 'train_s': 0.0, 'compile_s': 0.0, 'images': 0,
          'step_s': 0.0}


def train_step_of(config):
  """steps.train_step with the settings of `config` it uses, and nothing else of it."""
  augment = functools.partial(input_pipeline.augment, padding=config.crop_padding,
                              pad_mode=config.pad_mode, flip=config.flip)
  return functools.partial(steps.train_step, augment=augment if config.augment else None,
                           label_smoothing=config.label_smoothing, ema_decay=config.ema_decay)


class Trainer:
  """One run in one workdir: `with Trainer(config, workdir) as t: t.run()`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    self.config, self.workdir = config, workdir
    self.is_chief = jax.process_index() == 0
    with contextlib.ExitStack() as stack:  # closes what was opened if setting up fails
      self.checkpoints = stack.enter_context(
          checkpointing.Checkpoints(workdir, config.keep_checkpoints))
      self._check_saved_config()  # before any data is read or anything compiles
      self.data = input_pipeline.load_dataset(config)
      self.dp = dp = parallel.DataParallel(config)
      self.plan = input_pipeline.BatchPlan(
          num_test=len(self.data.test_labels), eval_batch_size=config.eval_batch_size,
          num_train=len(self.data.train_labels), batch_size=config.batch_size, seed=config.seed,
          drop_last=config.drop_last, num_devices=dp.num_devices,
          num_processes=jax.process_count(), process_index=jax.process_index())
      self.model = model_from_config(config.model, **dp.model_overrides())
      self.schedule = optim.learning_rate_schedule(config, self.plan.steps_per_epoch)
      state = self._initial_state(optim.make_optimizer(config, self.plan.steps_per_epoch))
      self.meta, self.last_saved = new_meta(), None
      if self.checkpoints.steps():
        state = self._resume(state)
      self.records = stack.enter_context(contextlib.closing(
          records.RunRecords(workdir, self.meta['history'], enabled=self.is_chief)))
      if self.is_chief:
        files.write_file(os.path.join(workdir, 'config.json'),
                         json.dumps(config.to_dict(), indent=1), 'the run config')
      self._place(state)
      self._close = stack.pop_all().close

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._close()

  def _check_saved_config(self):
    if not self.checkpoints.steps():
      return
    saved = self.checkpoints.restore({})[1]['config']
    conflicts = config_lib.resume_conflicts(saved, self.config)
    if conflicts:
      raise CheckpointError(
          f'{self.workdir} holds a run with another config ({"; ".join(conflicts[:3])}'
          f'{"; ..." if len(conflicts) > 3 else ""}): resume with the same config or use a new '
          '--workdir.')

  def _initial_state(self, tx):
    init_key, self.base_key = jax.random.split(jax.random.key(self.config.seed))
    return jax.device_get(jax.jit(functools.partial(
        steps.create_train_state, self.model, tx, use_ema=self.config.ema_decay > 0))(init_key))

  def _resume(self, state):
    items, meta = self.checkpoints.restore(checkpointing.items_of(state))
    self.meta = {key: meta.get(key, value) for key, value in new_meta().items()}
    self.last_saved = self._position()
    epoch, num_epochs = self.meta['epoch'], self.config.num_epochs
    if epoch > num_epochs or (epoch == num_epochs and self.meta['epoch_step']):
      raise CheckpointError(f'{self.workdir} already holds epoch {epoch}, beyond '
                            f'config.num_epochs={num_epochs}: raise it, or use another --workdir.')
    if meta['config'].get('num_epochs', num_epochs) != num_epochs:
      self._explain_new_length(ml_collections.ConfigDict(meta['config']))
    logging.info('resumed %s at %s of %d (%s); %d epochs left.', self.workdir, self.last_saved,
                 num_epochs, self.checkpoints.directory, num_epochs - epoch)
    return checkpointing.state_from(state, items)

  def _explain_new_length(self, saved):
    """A resume that changes num_epochs: say what that does to the learning rate."""
    done = self.meta['epoch'] * self.plan.steps_per_epoch + self.meta['epoch_step']
    before = optim.learning_rate_schedule(saved, self.plan.steps_per_epoch)(max(done - 1, 0))
    logging.info('config.num_epochs=%d (saved: %d): the schedule is recomputed for %d epochs; '
                 'the learning rate goes from %.4g (the last step trained) to %.4g (the next).',
                 self.config.num_epochs, saved.num_epochs, self.config.num_epochs,
                 float(before), float(self.schedule(done)))

  def _place(self, state):
    config, dp = self.config, self.dp
    self.state = dp.replicate(state)
    self.train_data = dp.replicate({'images': self.data.train_images,
                                    'labels': self.data.train_labels})
    self.test_data = dp.replicate({'images': self.data.test_images,
                                   'labels': self.data.test_labels})
    self.key_data = dp.replicate(jax.random.key_data(self.base_key))
    self._train_fn = dp.compile_train(train_step_of(config))
    self._eval_fn = dp.compile_eval(functools.partial(
        steps.eval_step, apply_fn=self.model.apply, flip_tta=config.eval_flip_tta))
    self._compiled, self._stop_flags = {}, [dp.stop_flags(False), dp.stop_flags(True)]
    self._estimated, self._plotted = False, time.monotonic()

  def _position(self) -> str:
    meta = self.meta
    if meta['epoch_step']:
      return (f'epoch {meta["epoch"] + 1} step {meta["epoch_step"]} of '
              f'{self.plan.steps_per_epoch}')
    return f'epoch {meta["epoch"]}'

  def compile(self):
    """Compiles the train step for each batch shape of an epoch, and the eval step, ahead of
    time, so that compilation is shown and timed on its own."""
    t0 = time.perf_counter()
    sizes = self.plan.batch_sizes
    logging.info('compiling the train step (%d batch shape%s) and the eval step ...',
                 len(sizes), 's' if len(sizes) > 1 else '')
    for size in sizes:
      indices = self.dp.shard(self.plan.local(np.arange(size, dtype=np.int32)))
      self._compiled[size] = self._train_fn.lower(self.state, self.train_data, indices,
                                                  self.key_data, self._stop_flags[0]).compile()
    indices, mask = next(self.plan.eval_batches())
    self._compiled['eval'] = self._eval_fn.lower(
        self._eval_variables(), self.test_data, self.dp.shard(self.plan.local(indices)),
        self.dp.shard(self.plan.local(mask))).compile()
    self.meta['compile_s'] += time.perf_counter() - t0
    logging.info('compiled in %.1f s.', time.perf_counter() - t0)

  def _eval_variables(self):
    return steps.eval_variables(self.state)

  def evaluate(self) -> dict:
    return _means(inference.run_batches(self.dp, self.plan, self._compiled['eval'],
                                        self._eval_variables(), self.test_data,
                                        self._bar_enabled))

  @property
  def _bar_enabled(self) -> bool:
    return self.config.progress_bar and self.is_chief

  def train_step(self, indices, stop: bool = False):
    """One compiled step on the batch `indices` (from `dp.shard`); returns its metric sums."""
    self.state, metrics = self._compiled[indices.size](
        self.state, self.train_data, indices, self.key_data, self._stop_flags[stop])
    return metrics

  def train_epoch(self, epoch: int, stop=interrupt.NEVER) -> list:
    """Trains epoch `epoch` from where the run stands; returns the metric sums of its steps so
    far: all of them, or fewer when a stop request was agreed on."""
    batches = self.plan.train_batches(epoch)
    done = self.meta['epoch_step']
    sums = [{k: np.full(self.dp.metric_shape, v, np.float32) for k, v in zip(SUM_KEYS, step)}
            for step in self.meta['epoch_sums']]  # the steps before an interruption
    bar = tqdm(total=len(batches), initial=done, desc=f'epoch {epoch + 1}/{self.config.num_epochs}',
               disable=None if self._bar_enabled else True, leave=False, mininterval=1.0, dynamic_ncols=True)
    clock = _StepClock(done, bar)
    with contextlib.closing(bar):
      for i in range(done, len(batches)):
        indices = self.dp.shard(self.plan.local(batches[i]))
        sums.append(self.dp.local(self.train_step(indices, bool(stop.requested))))
        if i - done >= LEAD_STEPS:  # wait for an older step, never the newest: the device stays busy
          finished = sums[i - LEAD_STEPS]
          jax.block_until_ready(finished)
          if int(finished['stop']):  # every process sees this at the same step
            return sums
          clock.tick(i - LEAD_STEPS + 1, sums, self._estimate)
        bar.update()
      jax.block_until_ready(sums)
    return sums

  def _estimate(self, seconds_per_step: float):
    """Once per run, early: how long the epoch and the run will take."""
    if self._estimated:
      return
    self._estimated = True
    steps_left = ((self._stop_at() - self.meta['epoch']) * self.plan.steps_per_epoch
                  - self.meta['epoch_step'])
    total = seconds_per_step * steps_left
    cpu = jax.devices()[0].platform == 'cpu' and total > CPU_NOTE_S
    logging.info('about %.3g s a step: %s for this epoch, %s of training for this run%s',
                 seconds_per_step, _duration(seconds_per_step * self.plan.steps_per_epoch),
                 _duration(total), '; no accelerator found: this recipe is meant for a GPU.'
                 if cpu else '.')

  def _stop_at(self) -> int:
    config = self.config
    if config.max_epochs_this_run:
      return min(config.num_epochs, self.meta['epoch'] + config.max_epochs_this_run)
    return config.num_epochs

  def _diverged(self, what: str):
    kept = (f'{self.last_saved} is the last good checkpoint, in {self.checkpoints.directory}'
            if self.last_saved else 'no checkpoint was kept')
    raise TrainingDiverged(f'the {what} became NaN or infinite; stopped. {kept[0].upper()}'
                           f'{kept[1:]}. Lower config.learning_rate or clip the gradients '
                           '(config.grad_clip).')

  def _save(self, test_accuracy=None):
    host = self.dp.to_host(self.state)
    items = checkpointing.items_of(host)
    if not all(_finite(tree) for tree in items.values()):
      self._diverged(f'state at {self._position()}')
    self.checkpoints.save(int(host.step), items, dict(
        self.meta, config=self.config.to_dict(), device=jax.devices()[0].device_kind),
                          test_accuracy)
    self.last_saved = self._position()

  def run(self, stop=interrupt.NEVER) -> dict:
    """Trains to config.num_epochs (or max_epochs_this_run more); returns the summary."""
    stop_at, first, alone = self._stop_at(), self.meta['epoch'], jax.process_count() == 1
    if first >= stop_at:
      logging.info('%s already holds %s of %d: nothing to train.', self.workdir,
                   self._position(), self.config.num_epochs)
      return self.summary()
    self._announce(stop_at)
    self.compile()
    for epoch in range(first, stop_at):
      if stop.requested and alone:  # several processes agree through the steps instead
        self._interrupted(stop)
      t0 = time.perf_counter()
      sums = self.train_epoch(epoch, stop)
      self._account(sums, time.perf_counter() - t0)
      if len(sums) < self.plan.steps_per_epoch:
        self._interrupted(stop)
      self._end_epoch(epoch, _means(sums), last=epoch + 1 == stop_at)
      if epoch == first and stop_at > epoch + 1:
        took, left = time.perf_counter() - t0, stop_at - epoch - 1
        logging.info('epoch %d took %.1f s: about %s for the %d epoch%s left in this run.',
                     epoch + 1, took, _duration(took * left), left, 's' if left > 1 else '')
    self.records.plot()
    return self.summary()

  def _account(self, sums: list, seconds: float):
    """Adds the steps just run to where the run stands (`sums`: this epoch's so far)."""
    meta = self.meta
    meta['images'] += self.plan.images_in_steps(meta['epoch_step'], len(sums))
    meta['step_s'] += seconds
    meta['epoch_s'] += seconds
    meta['train_s'] += seconds
    meta['epoch_step'] = len(sums)
    if len(sums) < self.plan.steps_per_epoch:  # kept for a resume in the middle of the epoch
      meta['epoch_sums'] = [[float(s[k]) for k in SUM_KEYS] for s in jax.device_get(sums)]

  def _epoch_record(self, epoch: int, train: dict, evaluate: bool) -> dict:
    if not math.isfinite(train['loss']):
      self._diverged(f'training loss in epoch {epoch + 1}')
    spe, meta = self.plan.steps_per_epoch, self.meta
    record = {'epoch': epoch + 1, 'train_loss': train['loss'],
              'train_accuracy': train['accuracy'],
              'learning_rate': float(self.schedule((epoch + 1) * spe - 1)),
              'epoch_train_s': meta['epoch_s'],
              'img_per_s': self.plan.images_in_steps(0, spe) / meta['epoch_s']}
    if evaluate:
      t0 = time.perf_counter()
      test = self.evaluate()
      meta['train_s'] += time.perf_counter() - t0
      if not math.isfinite(test['loss']):
        self._diverged(f'test loss in epoch {epoch + 1}')
      record.update(test_loss=test['loss'], test_accuracy=test['accuracy'])
    return record

  def _end_epoch(self, epoch: int, train: dict, last: bool):
    """Evaluates when due, records the epoch, saves when due."""
    config, meta, done = self.config, self.meta, epoch + 1
    every = lambda n: n and done % n == 0
    record = self._epoch_record(epoch, train, last or every(config.eval_every_epochs))
    meta.update(epoch=done, epoch_step=0, epoch_sums=[], epoch_s=0.0)
    self.records.log_epoch(record)
    accuracy = record.get('test_accuracy')
    new_best = accuracy is not None and accuracy > meta['best_test_accuracy']
    meta['best_test_accuracy'] = max(meta['best_test_accuracy'], accuracy or 0.0)
    if every(config.checkpoint_every_epochs) or last or new_best:
      self._save(accuracy)
    logging.info(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                          for k, v in record.items()))
    if every(config.checkpoint_every_epochs) and time.monotonic() - self._plotted > PLOT_EVERY_S:
      self.records.plot()  # also at the end of the run
      self._plotted = time.monotonic()

  def _interrupted(self, stop):
    """Saves where the run stands (unless saved already), then raises Interrupted."""
    if self.last_saved != self._position() and (self.meta['epoch'] or self.meta['epoch_step']):
      self._save()
    kept = (f'saved {self.last_saved} in {self.checkpoints.directory}' if self.last_saved
            else 'nothing was trained yet')
    raise Interrupted(f'{stop.requested or "a stop request"} received: stopped at '
                      f'{self._position()} of {self.config.num_epochs}; {kept}. Run the same '
                      'command again to resume.')

  def _announce(self, stop_at: int):
    config, dp = self.config, self.dp
    logging.info(
        'training on %d x %s (%s), global batch %d, %d steps per epoch, epochs %d-%d of %d.',
        dp.num_devices, jax.devices()[0].device_kind, config.parallel, config.batch_size,
        self.plan.steps_per_epoch, self.meta['epoch'] + 1, stop_at, config.num_epochs)

  def summary(self) -> dict:
    meta, config = self.meta, self.config
    finished = meta['epoch'] == config.num_epochs
    last = (meta['history'] or [{}])[-1]
    return {'config': config.name, 'epochs': meta['epoch'], 'num_epochs': config.num_epochs,
            'finished': finished, 'last_test_accuracy': last.get('test_accuracy', math.nan),
            'final_test_accuracy': last.get('test_accuracy', math.nan) if finished else math.nan,
            'best_test_accuracy': meta['best_test_accuracy'], 'train_s': meta['train_s'],
            'compile_s': meta['compile_s'],
            'img_per_s': meta['images'] / meta['step_s'] if meta['step_s'] else 0.0,
            'device': jax.devices()[0].device_kind}


class _StepClock:
  """Shows the loss and accuracy of finished steps on the bar, about every second, and times
  the first steps for the run's early estimate."""

  def __init__(self, done: int, bar):
    self.shown, self.bar, self.start = done, bar, None
    self.last = time.perf_counter()

  def tick(self, finished: int, sums, estimate):
    now = time.perf_counter()
    if self.start is None:
      self.start = (finished, now)
    elif finished - self.start[0] >= 2 * LEAD_STEPS or now - self.start[1] > 10:
      estimate((now - self.start[1]) / (finished - self.start[0]))
    if not self.bar.disable and now - self.last >= self.bar.mininterval:
      window = _means(sums[self.shown:finished])
      self.bar.set_postfix(loss=f"{window['loss']:.3f}", acc=f"{window['accuracy']:.1f}",
                           refresh=False)
      self.shown, self.last = finished, now


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop=None) -> dict:
  """Locks the workdir, then trains (or resumes) the run in it; returns its summary. A signal
  stops it cleanly (errors.Interrupted) unless the caller passes its own `stop`."""
  with contextlib.ExitStack() as stack:
    if stop is None:
      stop = stack.enter_context(interrupt.StopRequest())
    if jax.process_index() == 0:
      stack.enter_context(files.WorkdirLock(workdir))
    trainer = stack.enter_context(Trainer(config, workdir))
    return trainer.run(stop)
