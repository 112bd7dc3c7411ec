"""The training loop, evaluation and prediction.

  train_and_evaluate(config, workdir)       trains (or resumes) the run in workdir; its summary
  evaluate(config, workdir, which)          test accuracy (%) of a saved model
  predict(config, input, output, workdir)   ID,Labels predictions for an unlabeled pickle

Data flows one way: files -> NumPy arrays (host) -> uint8 arrays replicated on the devices ->
per step only the batch's dataset indices travel -> the jitted step gathers, augments and trains
-> metric sums, fetched rarely -> records and checkpoints once per epoch.
"""
import csv
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
from flax_seresnet import checkpointing, optim, parallel, records, steps
from flax_seresnet import config as config_lib
from flax_seresnet.errors import CheckpointError, ConfigError
from flax_seresnet.model import model_from_config

LEAD_STEPS = 8  # the host runs at most this many steps ahead of the device: the bar shows work done


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours} h {minutes:02d} min' if hours else f'{minutes} min {seconds:02d} s'


def _device_data(dp, images, labels):
  return dp.replicate({'images': images, 'labels': np.asarray(labels, np.int32)})


def _items(state) -> dict:
  """A host TrainState as checkpoint items: 'model' (what inference needs) and 'train'."""
  model = {'params': state.params, 'batch_stats': state.batch_stats}
  if state.ema_params is not None:
    model['ema_params'] = state.ema_params
  return {'model': model, 'train': flax.serialization.to_state_dict(
      {'step': state.step, 'opt_state': state.opt_state})}


def _from_items(state, items):
  train = flax.serialization.from_state_dict({'step': state.step, 'opt_state': state.opt_state},
                                             items['train'])
  model = items['model']
  return state.replace(params=model['params'], batch_stats=model['batch_stats'],
                       ema_params=model.get('ema_params'), **train)


def evaluate_on_devices(dp, eval_fn, variables, data, count: int, batch_size: int,
                        with_predictions: bool = False):
  """(mean loss and accuracy over `count` examples of device `data`, predicted classes or None):
  the one evaluation path of training, `evaluate` and `predict`."""
  sums, predictions = [], []
  for indices, mask in input_pipeline.eval_batches(count, batch_size,
                                                   multiple_of=dp.num_devices):
    batch_sums, batch_predictions = eval_fn(variables, data, dp.shard(indices), dp.shard(mask))
    sums.append(_local(batch_sums))
    if with_predictions:
      predictions.append(np.asarray(batch_predictions).reshape(-1)[mask])
  return _means(sums), (np.concatenate(predictions) if with_predictions else None)


def _local(metrics):
  """This process's copy of replicated metric sums (reading it needs no other process)."""
  return jax.tree.map(lambda x: x.addressable_data(0), metrics)


def _means(sums) -> dict:
  """Mean loss and accuracy (%) from a list of metric sums (one device transfer per key)."""
  totals = jax.tree.map(lambda *xs: float(jnp.stack(xs).sum()), *sums)
  return {'loss': totals['loss_sum'] / totals['count'],
          'accuracy': 100.0 * totals['correct'] / totals['count']}


class Trainer:
  """One run in one workdir: `run()` trains to config.num_epochs (or max_epochs_this_run)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.is_chief = jax.process_index() == 0
    self.dp = dp = parallel.DataParallel(config)
    if config.batch_size % dp.num_devices:
      raise ConfigError(f'config.batch_size={config.batch_size} does not split over the '
                        f'{dp.num_devices} devices: use a multiple of {dp.num_devices}.')
    self.checkpoints = checkpointing.Checkpoints(workdir, config.keep_checkpoints)
    if self.checkpoints.epochs():  # refuse another config before loading data or compiling
      _, meta = self.checkpoints.restore({})
      checkpointing.check_compatible(meta['config'], config.to_dict(), workdir)
    self.data = input_pipeline.load_dataset(config)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(
        len(self.data.train_images), config.batch_size, config.drop_last, dp.num_devices)
    if self.steps_per_epoch < 1:
      raise ConfigError(f'config.batch_size={config.batch_size} leaves no training step for '
                        f'{len(self.data.train_images)} images with drop_last=True.')
    self.model = model_from_config(config.model, **dp.model_overrides())
    tx = optim.make_optimizer(config, self.steps_per_epoch)
    self.learning_rate = optim.learning_rate_schedule(config, self.steps_per_epoch)
    init_key, base_key = jax.random.split(jax.random.key(config.seed))
    state = jax.device_get(jax.jit(functools.partial(
        steps.create_train_state, self.model, tx, use_ema=config.ema_decay > 0))(init_key))
    self.start_epoch, self.best_accuracy, self.train_s, history = 0, 0.0, 0.0, []
    if self.checkpoints.epochs():
      items, meta = self.checkpoints.restore(_items(state))
      state = _from_items(state, items)
      self.start_epoch, history = meta['epoch'], meta['history']
      self.best_accuracy, self.train_s = meta['best_test_accuracy'], meta['train_s']
      logging.info('resumed %s at epoch %d of %d (%s); %d epochs left.', workdir,
                   self.start_epoch, config.num_epochs, self.checkpoints.directory,
                   config.num_epochs - self.start_epoch)
    self.records = records.RunRecords(workdir, history, enabled=self.is_chief)
    self.state = dp.replicate(state)
    self.train_data = _device_data(dp, self.data.train_images, self.data.train_labels)
    self.test_data = _device_data(dp, self.data.test_images, self.data.test_labels)
    self.key_data = dp.replicate(jax.random.key_data(base_key))
    self._train_fn = dp.compile_train(functools.partial(steps.train_step, config=config))
    self._eval_fn = dp.compile_eval(functools.partial(
        steps.eval_step, apply_fn=self.model.apply, flip_tta=config.eval_flip_tta))
    self._compiled, self.compile_s = {}, 0.0

  def _batches(self, epoch: int):
    permutation = input_pipeline.epoch_permutation(self.config.seed, epoch,
                                                   len(self.data.train_images))
    return input_pipeline.train_batches(permutation, self.config.batch_size,
                                        drop_last=self.config.drop_last,
                                        multiple_of=self.dp.num_devices)

  def compile(self):
    """Compiles the train step for each batch shape of an epoch, and the eval step, ahead of
    time, so that compilation is shown and timed on its own."""
    t0 = time.perf_counter()
    shapes = sorted({len(b) for b in self._batches(0)}, reverse=True)
    logging.info('compiling the train step (%d batch shape%s) and the eval step ...',
                 len(shapes), 's' if len(shapes) > 1 else '')
    for size in shapes:
      indices = self.dp.shard(np.arange(size, dtype=np.int32))
      self._compiled[size] = self._train_fn.lower(self.state, self.train_data, indices,
                                                  self.key_data).compile()
    indices, mask = next(input_pipeline.eval_batches(1, self.config.eval_batch_size,
                                                     multiple_of=self.dp.num_devices))
    self._compiled['eval'] = self._eval_fn.lower(
        steps.eval_variables(self.state), self.test_data, self.dp.shard(indices),
        self.dp.shard(mask)).compile()
    self.compile_s += time.perf_counter() - t0
    logging.info('compiled in %.1f s.', time.perf_counter() - t0)

  def evaluate(self):
    return evaluate_on_devices(self.dp, self._compiled['eval'], steps.eval_variables(self.state),
                               self.test_data, len(self.data.test_images),
                               self.config.eval_batch_size)[0]

  def train_step(self, indices):
    """One compiled step on the batch `indices` (from `dp.shard`); returns its metric sums."""
    self.state, metrics = self._compiled[indices.size](self.state, self.train_data, indices,
                                                       self.key_data)
    return metrics

  def train_epoch(self, epoch: int):
    """Trains one epoch; returns (mean loss and accuracy, seconds, images)."""
    batches = self._batches(epoch)
    bar = tqdm(total=len(batches), desc=f'epoch {epoch + 1}/{self.config.num_epochs}',
               disable=not (self.config.progress_bar and self.is_chief), leave=False,
               mininterval=1.0, dynamic_ncols=True)
    sums, shown, t0 = [], 0, time.perf_counter()
    for i, batch in enumerate(batches):
      sums.append(_local(self.train_step(self.dp.shard(batch))))
      if i >= LEAD_STEPS:  # wait for an older step, never the newest: the device stays busy
        jax.block_until_ready(sums[i - LEAD_STEPS])
        if not bar.disable and time.perf_counter() - bar.last_print_t > 2 * bar.mininterval:
          window = _means(sums[shown:i - LEAD_STEPS + 1])  # finished steps only: no waiting
          shown = i - LEAD_STEPS + 1
          bar.set_postfix(loss=f"{window['loss']:.3f}", acc=f"{window['accuracy']:.1f}",
                          refresh=False)
      bar.update()
    means = _means(sums)  # waits for the last step
    bar.close()
    return means, time.perf_counter() - t0, sum(len(b) for b in batches)

  def _stop(self, what: str, epoch: int):
    self.checkpoints.diverged(f'the {what} became NaN or infinite in epoch {epoch}; stopped')

  def _save(self, epoch: int, test_accuracy):
    self.checkpoints.save(epoch, _items(self.dp.to_host(self.state)), {
        'config': self.config.to_dict(), 'history': self.records.history,
        'best_test_accuracy': self.best_accuracy, 'train_s': self.train_s,
        'device': jax.devices()[0].device_kind}, test_accuracy)

  def run(self) -> dict:
    config, dp = self.config, self.dp
    stop_at = config.num_epochs
    if config.max_epochs_this_run:
      stop_at = min(stop_at, self.start_epoch + config.max_epochs_this_run)
    kind = jax.devices()[0].platform
    logging.info(
        'training on %d x %s (%s), global batch %d, %d steps per epoch, epochs %d-%d of %d.%s',
        dp.num_devices, jax.devices()[0].device_kind, config.parallel, config.batch_size,
        self.steps_per_epoch, self.start_epoch + 1, stop_at, config.num_epochs,
        ' No accelerator found: this recipe is meant for a GPU and will be slow here.'
        if kind == 'cpu' else '')
    if self.start_epoch < stop_at:
      self.compile()
    images, seconds, record = 0, 0.0, (self.records.history or [{}])[-1]
    for epoch in range(self.start_epoch, stop_at):
      t0 = time.perf_counter()
      train, epoch_s, epoch_images = self.train_epoch(epoch)
      if not math.isfinite(train['loss']):
        self._stop('training loss', epoch + 1)
      images, seconds = images + epoch_images, seconds + epoch_s
      record = {'epoch': epoch + 1, 'train_loss': train['loss'],
                'train_accuracy': train['accuracy'],
                'learning_rate': float(self.learning_rate((epoch + 1) * self.steps_per_epoch - 1)),
                'epoch_train_s': epoch_s, 'img_per_s': epoch_images / epoch_s}
      last = epoch + 1 in (config.num_epochs, stop_at)
      if last or (config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0):
        test = self.evaluate()
        if not math.isfinite(test['loss']):
          self._stop('test loss', epoch + 1)
        record.update(test_loss=test['loss'], test_accuracy=test['accuracy'])
      self.train_s += time.perf_counter() - t0
      self.records.log_epoch(record)
      new_best = record.get('test_accuracy', -1.0) > self.best_accuracy
      self.best_accuracy = max(self.best_accuracy, record.get('test_accuracy', 0.0))
      periodic = (config.checkpoint_every_epochs
                  and (epoch + 1) % config.checkpoint_every_epochs == 0)
      if periodic or last or new_best:
        self._save(epoch + 1, record.get('test_accuracy'))
      logging.info(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                            for k, v in record.items()))
      if epoch == self.start_epoch and stop_at > epoch + 1:
        took = time.perf_counter() - t0
        left = stop_at - epoch - 1
        logging.info('epoch %d took %.1f s: about %s for the %d epoch%s left in this run.',
                     epoch + 1, took, _duration(took * left), left, 's' if left > 1 else '')
      if periodic:
        self.records.plot()
    if self.start_epoch >= stop_at:
      logging.info('%s already holds epoch %d of %d: nothing to train.', self.workdir,
                   self.start_epoch, config.num_epochs)
    self.records.plot()
    self.records.close()
    self.checkpoints.close()
    finished = stop_at == config.num_epochs
    summary = {
        'config': config.name, 'epochs': stop_at, 'finished': finished,
        'final_test_accuracy': record.get('test_accuracy', math.nan) if finished else math.nan,
        'best_test_accuracy': self.best_accuracy, 'train_s': self.train_s,
        'compile_s': self.compile_s, 'img_per_s': images / seconds if seconds else 0.0,
        'device': jax.devices()[0].device_kind}
    if self.is_chief:
      logging.info(records.summary_line(summary))
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Validates the config, locks the workdir, then trains (or resumes) the run in it."""
  config_lib.validate(config)
  lock = checkpointing.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    return Trainer(config, workdir).run()
  finally:
    if lock:
      lock.release()


def load_for_inference(config, workdir=None, which: str = 'latest', torch_checkpoint=None):
  """(model, variables) of a saved run's checkpoint or of an original PyTorch checkpoint; logs
  which one and which model config it uses."""
  if torch_checkpoint:
    from flax_seresnet import torch_bridge
    state_dict = torch_bridge.read_state_dict(torch_checkpoint)
    fields = torch_bridge.infer_model_config(state_dict)
    logging.info('model: PyTorch checkpoint %s; architecture from its shapes: %s',
                 torch_checkpoint, fields)
    model = model_from_config(fields, dtype=config.model.dtype)
    return model, torch_bridge.load_torch_checkpoint(state_dict, model)
  if not workdir:
    raise ConfigError('give --workdir (a training run) or --torch_checkpoint PATH to evaluate.')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise CheckpointError(f'--workdir {workdir} holds no checkpoints: train first, or give '
                          'another --workdir or --torch_checkpoint PATH.')
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  saved = ml_collections.ConfigDict(checkpoints.restore({}, which)[1]['config'])
  model = model_from_config(saved.model)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), dict(shapes))
  if saved.ema_decay:
    template['ema_params'] = template['params']
  items, meta = checkpoints.restore({'model': template}, which)
  checkpoints.close()
  logging.info('model: epoch %d of %s (%s checkpoint, test accuracy %s), with the model config '
               'saved there: %s', meta['epoch'], workdir, which,
               (meta['history'][-1:] or [{}])[0].get('test_accuracy', 'not measured'),
               saved.model.to_dict())
  if json.dumps(config.model.to_dict()) != json.dumps(saved.model.to_dict()):  # tuples as lists
    logging.warning('the model settings of --config differ from those saved in %s; the saved '
                    'ones are used.', workdir)
  weights = items['model']
  return model, {'params': weights.get('ema_params', weights['params']),
                 'batch_stats': weights['batch_stats']}


def _infer(config, model, variables, images, labels):
  """(mean loss and accuracy, predicted classes) of a model on host images, on every device."""
  dp = parallel.DataParallel(config)
  eval_fn = dp.compile_eval(functools.partial(steps.eval_step, apply_fn=model.apply,
                                              flip_tta=config.eval_flip_tta))
  return evaluate_on_devices(dp, eval_fn, dp.replicate(variables),
                             _device_data(dp, images, labels), len(images),
                             config.eval_batch_size, with_predictions=True)


def evaluate(config, workdir=None, which: str = 'latest', torch_checkpoint=None) -> float:
  """Test accuracy (%) of a saved model on the test set of `config`."""
  config_lib.validate(config)
  model, variables = load_for_inference(config, workdir, which, torch_checkpoint)
  data = input_pipeline.load_dataset(config)
  return _infer(config, model, variables, data.test_images, data.test_labels)[0]['accuracy']


def predict(config, input_path: str, output_csv: str, workdir=None, which: str = 'latest',
            torch_checkpoint=None) -> int:
  """Writes `ID,Labels` predictions for an unlabeled pickle; returns the number of rows."""
  config_lib.validate(config)
  folder = os.path.dirname(os.path.abspath(output_csv))
  if os.path.isdir(output_csv) or not os.path.isdir(folder):
    raise ConfigError(f'--output {output_csv} must be a file in an existing folder.')
  images, ids = input_pipeline.load_unlabeled(input_path)
  model, variables = load_for_inference(config, workdir, which, torch_checkpoint)
  _, predictions = _infer(config, model, variables, images, np.zeros(len(images), np.int32))
  tmp = f'{output_csv}.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['ID', 'Labels'])
    ids = [i.decode('latin-1') if isinstance(i, bytes) else i for i in ids.tolist()]  # Python 2
    writer.writerows(zip(ids, predictions.tolist()))
  os.replace(tmp, output_csv)  # never a half-written CSV
  return len(ids)
