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
import ml_collections
import numpy as np
from absl import logging

import input_pipeline
from flax_seresnet import checkpointing, files, inference, interrupt, optim, parallel, progress
from flax_seresnet import identity, records, steps
from flax_seresnet.position import RunPosition
from flax_seresnet import config as config_lib
from flax_seresnet.errors import CheckpointError, Interrupted, TrainingDiverged
from flax_seresnet.model import model_from_config

CPU_NOTE_S = 3600  # a CPU run estimated longer than this is told that the recipe wants a GPU
PLOT_EVERY_S = 60  # curves.png at periodic checkpoints at most this often (a plot takes ~0.5 s)
CPU_FLOPS = 100e9  # a generous sustained rate for a CPU: the early note errs short
CPU_CHECK = 'python main.py --config configs/smoke.py --workdir runs/smoke'


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in flax.traverse_util.flatten_dict(tree).values()
             if np.issubdtype(np.asarray(x).dtype, np.floating))


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
    self.is_chief, self.alone = jax.process_index() == 0, jax.process_count() == 1
    with contextlib.ExitStack() as stack:  # closes what was opened if setting up fails
      open_checkpoints = lambda: stack.enter_context(
          checkpointing.Checkpoints(workdir, config.keep_checkpoints))
      resuming = os.path.isdir(os.path.join(workdir, 'checkpoints'))
      if resuming:  # its config is checked before any data is read or anything compiles
        self.checkpoints = open_checkpoints()
        self._check_saved_config()
      # A new run writes nothing before this; the validation set is held out of the training
      # set here, before the batch plan: it is never trained on.
      self.splits = input_pipeline.load_splits(config)
      self.data = self.splits.data
      if not resuming:
        self.checkpoints = open_checkpoints()
      self.dp = dp = parallel.DataParallel(config)
      self.plan = input_pipeline.BatchPlan(
          num_test=len(self.data.test_labels), eval_batch_size=config.eval_batch_size,
          num_train=len(self.data.train_labels), batch_size=config.batch_size, seed=config.seed,
          drop_last=config.drop_last, num_devices=dp.num_devices,
          num_processes=jax.process_count(), process_index=jax.process_index())
      self.val_plan = self._validation_plan()
      self.best_on = 'val' if self.val_plan else 'test'  # the set that picks the best epoch
      self.identity = identity.of(config)
      self.model = model_from_config(config.model, **dp.model_overrides())
      self.schedule = optim.learning_rate_schedule(config, self.plan.steps_per_epoch)
      state = self._initial_state(optim.make_optimizer(config, self.plan.steps_per_epoch))
      self.position, self.last_saved = RunPosition(), None
      if self.checkpoints.steps():
        state = self._resume(state)
      self.records = stack.enter_context(contextlib.closing(
          records.RunRecords(workdir, self.position.history, self.is_chief, config.name)))
      if self.is_chief:
        files.write_file(os.path.join(workdir, 'config.json'),
                         json.dumps(self._recorded_config(), indent=1), 'the run config')
      self._place(state)
      self._close = stack.pop_all().close

  def __enter__(self):
    return self

  def _validation_plan(self):
    """The validation set's evaluation batches (the test set's rules), or None without one."""
    if not self.config.validation_size:
      return None
    return input_pipeline.BatchPlan(
        num_test=len(self.splits.validation_labels), eval_batch_size=self.config.eval_batch_size,
        num_devices=self.dp.num_devices, num_processes=jax.process_count(),
        process_index=jax.process_index())

  def _recorded_config(self) -> dict:
    """The config as config.json records it, with the data folder actually read (from
    $CIFAR10_DATA_DIR or the cache when config.data_dir is ''), the code's commit and the
    config's hash (identity.py)."""
    recorded = dict(self.config.to_dict(), **self.identity)
    if self.config.dataset == 'cifar10':
      recorded['data_dir'] = str(input_pipeline.dataset.cifar10_dir(self.config).resolve())
    return recorded

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
    self.position = RunPosition.from_meta(meta)
    self.last_saved = self._where()
    epoch, num_epochs = self.position.epoch, self.config.num_epochs
    if epoch > num_epochs or (epoch == num_epochs and self.position.epoch_step):
      raise CheckpointError(f'{self.workdir} already holds epoch {epoch}, beyond '
                            f'config.num_epochs={num_epochs}: raise it, or use another --workdir.')
    if meta['config'].get('num_epochs', num_epochs) != num_epochs:
      self._explain_new_length(ml_collections.ConfigDict(meta['config']))
    logging.info('resumed %s at %s of %d (%s); %d epochs left.', self.workdir, self.last_saved,
                 num_epochs, self.checkpoints.directory, num_epochs - epoch)
    return checkpointing.state_from(state, items)

  def _explain_new_length(self, saved):
    """A resume that changes num_epochs: say what that does to the learning rate."""
    done = self.position.epoch * self.plan.steps_per_epoch + self.position.epoch_step
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
    self.val_data = dp.replicate({'images': self.splits.validation_images,
                                  'labels': self.splits.validation_labels})
    self.key_data = dp.replicate(jax.random.key_data(self.base_key))
    self._train_fn = dp.compile_train(train_step_of(config))
    self._eval_fn = dp.compile_eval(functools.partial(
        steps.eval_step, apply_fn=self.model.apply, flip_tta=config.eval_flip_tta))
    self._compiled, self._stop_flags = {}, [dp.stop_flags(False), dp.stop_flags(True)]
    self.pace = progress.Pace(parallel.agree_on, self._estimate)
    self._plotted = time.monotonic()

  def _where(self) -> str:
    return self.position.where(self.plan.steps_per_epoch)

  def _batch(self, rows):
    """This process's rows of the global batch `rows`, on its devices."""
    return self.dp.shard(self.plan.local(rows))

  def compile(self, steps_left: int = 0):
    """Compiles the train step for each batch shape of an epoch, and the eval step, ahead of
    time, so that compilation is shown and timed on its own. On a CPU, a run of `steps_left`
    steps that will take hours is told so first, from XLA's count of the step's work."""
    t0 = time.perf_counter()
    sizes = self.plan.batch_sizes
    logging.info('compiling the train step (%d batch shape%s) and the eval step ...',
                 len(sizes), 's' if len(sizes) > 1 else '')
    lowered = {size: self._train_fn.lower(
        self.state, self.train_data, self._batch(np.arange(size, dtype=np.int32)),
        self.key_data, self._stop_flags[0]) for size in sizes}
    self._cpu_note(lowered[sizes[0]], steps_left)
    for size in sizes:
      self._compiled[size] = lowered[size].compile()
    self._eval_step(self.test_data, self.plan)
    if self.val_plan:
      self._eval_step(self.val_data, self.val_plan)
    self.position.compile_s += time.perf_counter() - t0
    logging.info('compiled in %.1f s.', time.perf_counter() - t0)

  def _cpu_note(self, lowered, steps_left: int):
    if not self._on_cpu or not steps_left:
      return
    costs = lowered.cost_analysis()
    flops = float((costs[0] if isinstance(costs, (list, tuple)) else costs or {}).get('flops', 0))
    hours = flops * steps_left / CPU_FLOPS / 3600
    if hours * 3600 > CPU_NOTE_S:
      logging.info('no accelerator found: %d steps of %.3g GFLOP each (XLA\'s count) take about '
                   '%.0f h even at %.0f GFLOP/s, more than a CPU sustains (the measured estimate '
                   'follows after the first steps). This recipe is meant for a GPU; a check of '
                   'the setup on a CPU, in minutes: %s', steps_left, flops / 1e9, hours,
                   CPU_FLOPS / 1e9, CPU_CHECK)

  def _eval_variables(self):
    return steps.eval_variables(self.state)

  def _eval_step(self, data, plan):
    """The compiled eval step for `data` in `plan`'s batches: one per shape, so a validation
    set of the test set's size and batch shares the test set's."""
    key = ('eval', plan.num_test, plan.eval_size)
    if key not in self._compiled:
      indices, mask = next(plan.eval_batches())
      self._compiled[key] = self._eval_fn.lower(
          self._eval_variables(), data, self._batch(indices), self._batch(mask)).compile()
    return self._compiled[key]

  def evaluate(self, which: str = 'test') -> dict:
    """Loss and accuracy on the test set, or on the validation set (`which='val'`)."""
    data, plan = (self.val_data, self.val_plan) if which == 'val' else (self.test_data, self.plan)
    return progress.mean_metrics(inference.run_batches(
        self.dp, plan, self._eval_step(data, plan), self._eval_variables(), data,
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
    far: all of them, or fewer when a stop was requested."""
    batches = self.plan.train_batches(epoch)
    done = self.position.epoch_step
    sums = [{k: np.full(self.dp.metric_shape, v, np.float32)
             for k, v in zip(progress.SUM_KEYS, step)}
            for step in self.position.epoch_sums]  # the steps before an interruption
    with progress.EpochBar(len(batches), done, f'epoch {epoch + 1}/{self.config.num_epochs}',
                           self._bar_enabled) as bar:
      for i in range(done, len(batches)):
        sums.append(self.dp.local(self.train_step(self._batch(batches[i]),
                                                  bool(stop.requested))))
        if self._stops_here(sums, i - done, bar, stop):
          break
        bar.dispatched()
    jax.block_until_ready(sums)
    return sums

  def _stops_here(self, sums: list, dispatched: int, bar, stop) -> bool:
    """Waits for the step `pace.lead` behind the newest (the device stays busy, the host at most
    about a second ahead), then says whether the run stops after the newest step: at once on a
    signal when alone; several processes learn of a request from the steps' flags, at the same
    step."""
    lead = self.pace.lead
    if dispatched >= lead:
      finished = sums[-1 - lead]
      jax.block_until_ready(finished)
      if int(finished['stop']):
        return True
      self.pace.finished()
      bar.show(sums, len(sums) - lead)
    return self.alone and bool(stop.requested)

  def _estimate(self, seconds_per_step: float):
    """Once per run, early: how long the epoch and the run will take."""
    steps_left = ((self._stop_at() - self.position.epoch) * self.plan.steps_per_epoch
                  - self.position.epoch_step)
    cpu = self._on_cpu and seconds_per_step * steps_left > CPU_NOTE_S
    logging.info(progress.estimate_line(
        seconds_per_step, self.plan.steps_per_epoch, steps_left,
        f'no accelerator found: this recipe is meant for a GPU (a CPU check: {CPU_CHECK})'
        if cpu else None))

  @property
  def _on_cpu(self) -> bool:
    return jax.devices()[0].platform == 'cpu'

  def _stop_at(self) -> int:
    config = self.config
    if config.max_epochs_this_run:
      return min(config.num_epochs, self.position.epoch + config.max_epochs_this_run)
    return config.num_epochs

  def _diverged(self, what: str):
    kept = (f'{self.last_saved} is the last good checkpoint, in {self.checkpoints.directory}'
            if self.last_saved else 'no checkpoint was kept')
    raise TrainingDiverged(f'the {what} became NaN or infinite; stopped. {kept[0].upper()}'
                           f'{kept[1:]}. Lower config.learning_rate or clip the gradients '
                           '(config.grad_clip).')

  def _save(self, metrics=None):
    host = self.dp.to_host(self.state)
    items = checkpointing.items_of(host)
    if not all(_finite(tree) for tree in items.values()):
      self._diverged(f'state at {self._where()}')
    self.checkpoints.save(int(host.step), items, dict(
        self.position.to_meta(), config=self.config.to_dict(),
        device=jax.devices()[0].device_kind), metrics)
    self.last_saved = self._where()

  def run(self, stop=interrupt.NEVER) -> dict:
    """Trains to config.num_epochs (or max_epochs_this_run more); returns the summary."""
    stop_at, first = self._stop_at(), self.position.epoch
    if first >= stop_at:
      logging.info('%s already holds %s of %d: nothing to train.', self.workdir,
                   self._where(), self.config.num_epochs)
      return self.summary()
    self.stop = stop
    stop.doing = 'stopping after the step in flight, then saving'
    self._announce(stop_at)
    self.compile((stop_at - first) * self.plan.steps_per_epoch - self.position.epoch_step)
    for epoch in range(first, stop_at):
      if stop.requested and self.alone:  # several processes agree through the steps instead
        self._interrupted(stop)
      t0 = time.perf_counter()
      sums = self.train_epoch(epoch, stop)
      self._account(sums, time.perf_counter() - t0)
      if len(sums) < self.plan.steps_per_epoch:
        self._interrupted(stop)
      self._end_epoch(epoch, progress.mean_metrics(sums), last=epoch + 1 == stop_at)
      if epoch == first and stop_at > epoch + 1:
        took, left = time.perf_counter() - t0, stop_at - epoch - 1
        logging.info('epoch %d took %.1f s: about %s for the %d epoch%s left in this run.',
                     epoch + 1, took, progress.duration(took * left), left,
                     's' if left > 1 else '')
    self.records.plot()
    return self.summary()

  def _account(self, sums: list, seconds: float):
    """Adds the steps just run to where the run stands (`sums`: this epoch's so far)."""
    host = None
    if len(sums) < self.plan.steps_per_epoch:  # kept for a resume in the middle of the epoch
      host = [[float(np.sum(s[k])) for k in progress.SUM_KEYS] for s in jax.device_get(sums)]
    self.position.account(self.plan.images_in_steps(self.position.epoch_step, len(sums)),
                          seconds, len(sums), host)

  def _epoch_record(self, epoch: int, train: dict, evaluate: bool) -> dict:
    if not math.isfinite(train['loss']):
      self._diverged(f'training loss in epoch {epoch + 1}')
    spe, position = self.plan.steps_per_epoch, self.position
    record = {'epoch': epoch + 1, 'train_loss': train['loss'],
              'train_accuracy': train['accuracy'],
              'learning_rate': float(self.schedule((epoch + 1) * spe - 1)),
              'epoch_train_s': position.epoch_s,
              'img_per_s': self.plan.images_in_steps(0, spe) / position.epoch_s}
    for which in (('val', 'test') if self.val_plan else ('test',)) if evaluate else ():
      t0 = time.perf_counter()
      metrics = self.evaluate(which)
      position.train_s += time.perf_counter() - t0
      if not math.isfinite(metrics['loss']):
        self._diverged(f'{"validation" if which == "val" else "test"} loss in epoch {epoch + 1}')
      record.update({f'{which}_loss': metrics['loss'], f'{which}_accuracy': metrics['accuracy']})
    return dict(record, **self.identity)

  def _end_epoch(self, epoch: int, train: dict, last: bool):
    """Evaluates when due, records the epoch, saves when due."""
    config, done = self.config, epoch + 1
    every = lambda n: n and done % n == 0
    record = self._epoch_record(epoch, train, last or every(config.eval_every_epochs))
    new_best = self.position.end_epoch(record, self.best_on)
    self.records.log_epoch(record)
    best = f'{self.best_on}_accuracy'  # only this ranks the save (checkpointing.best_metric)
    if every(config.checkpoint_every_epochs) or last or new_best:
      self._save({best: record[best]} if best in record else None)
    logging.info(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                          for k, v in record.items() if k not in self.identity))
    if every(config.checkpoint_every_epochs) and time.monotonic() - self._plotted > PLOT_EVERY_S:
      self.records.plot()  # also at the end of the run
      self._plotted = time.monotonic()

  def _interrupted(self, stop):
    """Saves where the run stands (unless saved already), then raises Interrupted."""
    if self.last_saved != self._where() and self.position.started:
      self._save()
    kept = (f'saved {self.last_saved} in {self.checkpoints.directory}' if self.last_saved
            else 'nothing was trained yet')
    raise Interrupted(f'{stop.requested or "a stop request"} received: stopped at '
                      f'{self._where()} of {self.config.num_epochs}; {kept}. Run the same '
                      'command again to resume.')

  def _announce(self, stop_at: int):
    config, dp = self.config, self.dp
    logging.info(
        'training on %d x %s (%s), global batch %d, %d steps per epoch, epochs %d-%d of %d.',
        dp.num_devices, jax.devices()[0].device_kind, config.parallel, config.batch_size,
        self.plan.steps_per_epoch, self.position.epoch + 1, stop_at, config.num_epochs)

  def summary(self) -> dict:
    return dict(self.position.summary(self.config.name, self.config.num_epochs,
                                      jax.devices()[0].device_kind, self.best_on),
                **self.identity)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop=None) -> dict:
  """Locks the workdir, then trains (or resumes) the run in it; returns its summary. A signal
  stops it cleanly (errors.Interrupted) unless the caller passes its own `stop`."""
  with contextlib.ExitStack() as stack:
    if stop is None:
      stop = stack.enter_context(interrupt.StopRequest())
    lock = stack.enter_context(files.WorkdirLock(workdir)) if jax.process_index() == 0 else None
    try:
      trainer = stack.enter_context(Trainer(config, workdir))
    except BaseException:
      if lock:
        lock.remove_if_unused()  # a run that could not start leaves no lock behind
      raise
    return trainer.run(stop)
