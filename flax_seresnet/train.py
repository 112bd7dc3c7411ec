"""The training loop: data on the devices, one jitted step per batch, evaluation, checkpoints.

  train_and_evaluate(config, workdir)   trains (or resumes) and returns the summary
  evaluate(config, workdir=..., which='latest'|'best', torch_checkpoint=None)
  predict(config, input_path, output_csv, workdir=..., torch_checkpoint=None)

Data flows one way: files -> NumPy arrays (host) -> uint8 arrays replicated on every device ->
per step, only the batch's dataset indices travel (a few hundred bytes) -> the jitted step
gathers, augments and trains -> metric sums, fetched once per epoch -> records, checkpoints.
"""
import csv
import dataclasses
import functools
import math
import os
import time
from typing import Any, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import input_pipeline
from flax_seresnet import checkpointing, optim, parallel, records, steps
from flax_seresnet.config_validation import ConfigError, check_workdir, validate_config
from flax_seresnet.model import model_from_config


from flax_seresnet.errors import TrainingDiverged


# --- Small pieces --------------------------------------------------------------------------------

def _host_metrics(metrics_list) -> Dict[str, float]:
  """Sums a list of per-step metric dicts (device arrays) with one transfer per key."""
  if not metrics_list:
    return {}
  out = {}
  for key in metrics_list[0]:
    # One replica's value of each step (all replicas hold the same psum-ed sums).
    local = [m[key].addressable_data(0) for m in metrics_list]
    out[key] = float(np.asarray(jnp.stack(local)).sum())
  return out


def _means(sums: Dict[str, float]) -> Dict[str, float]:
  count = max(sums.get('count', 0.0), 1.0)
  return {'loss': sums['loss_sum'] / count, 'accuracy': 100.0 * sums['correct'] / count}


def _state_dict(host_state: steps.TrainState) -> Dict[str, Any]:
  """The saved part of a TrainState as a nested dict (no functions, no None leaves)."""
  d = flax.serialization.to_state_dict(host_state)
  return {k: v for k, v in d.items() if v is not None}


def _from_state_dict(template: steps.TrainState, restored: Dict[str, Any]) -> steps.TrainState:
  """Inverse of `_state_dict`: the saved arrays into a TrainState like `template`."""
  full = flax.serialization.to_state_dict(template)
  restored = dict(restored, **{k: None for k, v in full.items() if v is None})
  return flax.serialization.from_state_dict(template, restored)


def _device_name() -> str:
  return jax.devices()[0].device_kind


@dataclasses.dataclass
class Setup:
  """Everything a run derives from its config before the first step."""
  config: ml_collections.ConfigDict
  dp: parallel.DataParallel
  data: input_pipeline.Cifar10
  model: Any
  state: steps.TrainState
  steps_per_epoch: int
  base_key: jax.Array


def _build(config: ml_collections.ConfigDict, load_data: bool = True,
           steps_per_epoch: Optional[int] = None) -> Setup:
  dp = parallel.DataParallel(config.parallel, config.sync_batch_stats,
                             config.get('num_devices', 0))
  data = input_pipeline.load_dataset(config) if load_data else None
  if steps_per_epoch is None:
    steps_per_epoch = input_pipeline.steps_per_epoch(
        len(data.train_images), config.batch_size, config.drop_last, dp.num_devices)
    if steps_per_epoch < 1:
      raise ConfigError(f'config.batch_size={config.batch_size} leaves no training step for '
                       f'{len(data.train_images)} images with drop_last={config.drop_last}.')
  model = model_from_config(config.model, **dp.model_overrides())
  try:
    tx = optim.make_optimizer(config, steps_per_epoch)
  except ValueError as e:  # e.g. a one-cycle warmup shorter than one step for this data size
    raise ConfigError(str(e)) from None
  init_key, base_key = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(functools.partial(steps.create_train_state, model, tx,
                                    use_ema=config.ema_decay > 0))(init_key)
  return Setup(config, dp, data, model, state, steps_per_epoch, base_key)


# --- Training ------------------------------------------------------------------------------------

class Trainer:
  """Holds a run's compiled steps and device data; `run()` trains to config.num_epochs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate_config(config, config.get('num_devices', 0) or jax.device_count())
    self.is_chief = jax.process_index() == 0
    if self.is_chief:
      check_workdir(workdir)
    self.config, self.workdir = config, workdir
    s = _build(config)
    self.dp, self.model, self.steps_per_epoch = s.dp, s.model, s.steps_per_epoch
    self.data, self.base_key = s.data, s.base_key
    self.learning_rate = optim.learning_rate_schedule(config, self.steps_per_epoch)  # for records
    self.host_state = jax.device_get(s.state)
    self.checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
    self.records = records.RunRecords(workdir, enabled=self.is_chief)
    self.start_epoch, self.best_acc, self.train_s, self.compile_s = 0, 0.0, 0.0, 0.0
    self._resume_if_possible()

    dp = self.dp
    self.train_dev = dp.replicate({'images': self.data.train_images,
                                   'labels': self.data.train_labels.astype(np.int32)})
    self.test_dev = dp.replicate({'images': self.data.test_images,
                                  'labels': self.data.test_labels.astype(np.int32)})
    self.key_dev = dp.replicate(jax.random.key_data(self.base_key)) if dp.mode == 'jit' else (
        jax.random.key_data(self.base_key))
    if config.get('augment', True):
      augment = functools.partial(input_pipeline.augment, padding=config.crop_padding,
                                  pad_mode=config.pad_mode, flip=config.flip)
    else:
      augment = lambda images, keys: input_pipeline.normalize(images)
    train_fn = functools.partial(self._train_step_from_key_data, augment_fn=augment,
                                 label_smoothing=config.label_smoothing,
                                 ema_decay=config.ema_decay)
    self._train_step = dp.compile_train_step(train_fn)
    self._eval_step = dp.compile_eval_step(functools.partial(
        steps.eval_step, apply_fn=self.model.apply, flip_tta=config.eval_flip_tta))
    self.eval_plan = [
        (dp.shard_batch(input_pipeline.process_slice(idx, jax.process_index(),
                                                     jax.process_count())),
         dp.shard_batch(input_pipeline.process_slice(mask, jax.process_index(),
                                                     jax.process_count())))
        for idx, mask in input_pipeline.eval_batches(
            len(self.data.test_images), config.eval_batch_size, multiple_of=dp.num_devices)]
    self._compiled = {}

  @staticmethod
  def _train_step_from_key_data(state, batch, key_data, **kwargs):
    # Keys travel as raw uint32 data (a typed key cannot be donated or replicated everywhere).
    return steps.train_step(state, batch, jax.random.wrap_key_data(key_data), **kwargs)

  # --- resume ---
  def _resume_if_possible(self):
    epoch = self.checkpointer.latest_epoch()
    if epoch is None:
      return
    meta = self.checkpointer.restore_meta()
    checkpointing.check_compatible(meta['config'], self.config.to_dict(), self.workdir)
    target = _state_dict(self.host_state)
    restored, meta = self.checkpointer.restore(target)
    self.host_state = _from_state_dict(self.host_state, restored)
    self.start_epoch = int(meta['epoch'])
    self.best_acc = float(meta.get('best_test_accuracy', 0.0))
    self.train_s = float(meta.get('train_s', 0.0))
    self.records.restore(meta.get('history', []))
    logging.info('Resumed from %s at epoch %d.', self.workdir, self.start_epoch)
    if self.is_chief:
      print(f'resumed from epoch {self.start_epoch} of {self.workdir}', flush=True)

  # --- compilation (ahead of time, so its cost is measured on its own) ---
  def _compiled_step(self, name, fn, *args):
    # Only the batch (args[2], the indices) changes shape within a run: the last partial batch.
    shapes = (name, args[2].shape)
    if shapes not in self._compiled:
      t0 = time.perf_counter()
      self._compiled[shapes] = fn.lower(*args).compile()
      self.compile_s += time.perf_counter() - t0
    return self._compiled[shapes]

  def _batch_indices(self, global_indices: np.ndarray):
    local = input_pipeline.process_slice(global_indices, jax.process_index(),
                                         jax.process_count())
    return self.dp.shard_batch(local)

  def compile_all(self, state):
    """Compiles the train step for every batch shape of an epoch, and the eval step."""
    batches = input_pipeline.train_batches(
        input_pipeline.epoch_permutation(self.config.seed, 0, len(self.data.train_images)),
        self.config.batch_size, drop_last=self.config.drop_last,
        multiple_of=self.dp.num_devices)
    for size in sorted({len(b) for b in batches}):
      self._compiled_step('train', self._train_step, state, self.train_dev,
                          self._batch_indices(np.arange(size, dtype=np.int32)), self.key_dev)
    idx, mask = self.eval_plan[0]
    self._compiled_step('eval', self._eval_step, steps.eval_variables(state), self.test_dev,
                        idx, mask)

  def evaluate(self, state) -> Dict[str, float]:
    variables = steps.eval_variables(state)
    metrics = []
    for idx, mask in self.eval_plan:
      fn = self._compiled_step('eval', self._eval_step, variables, self.test_dev, idx, mask)
      metrics.append(fn(variables, self.test_dev, idx, mask))
    return _means(_host_metrics(metrics))

  def train_epoch(self, state, epoch: int):
    config = self.config
    n = len(self.data.train_images)
    batches = input_pipeline.train_batches(
        input_pipeline.epoch_permutation(config.seed, epoch, n), config.batch_size,
        drop_last=config.drop_last, multiple_of=self.dp.num_devices)
    bar = tqdm(total=len(batches), desc=f'epoch {epoch + 1}/{config.num_epochs}',
               disable=not (config.progress_bar and self.is_chief), leave=False,
               dynamic_ncols=True)
    metrics_list = []
    images_done = 0
    t0 = time.perf_counter()
    for i, global_indices in enumerate(batches):
      idx = self._batch_indices(global_indices)
      step = self._compiled_step('train', self._train_step, state, self.train_dev, idx,
                                 self.key_dev)
      state, metrics = step(state, self.train_dev, idx, self.key_dev)
      metrics_list.append(metrics)
      images_done += len(global_indices)
      # Fetching a value waits for the device; do it rarely so the host stays ahead.
      if not bar.disable and (i % 50 == 49 or i == len(batches) - 1):
        m = _means(_host_metrics(metrics_list[-50:]))
        bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{m['accuracy']:.1f}",
                        img_s=f'{images_done / (time.perf_counter() - t0):.0f}')
        bar.update(i + 1 - bar.n)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    bar.close()
    return state, _means(_host_metrics(metrics_list)), seconds, images_done

  def _meta(self, epoch):
    return {'epoch': epoch, 'seed': int(self.config.seed),
            'rng_key_data': np.asarray(jax.random.key_data(self.base_key)).tolist(),
            'config': self.config.to_dict(), 'history': self.records.history,
            'best_test_accuracy': self.best_acc, 'train_s': self.train_s,
            'steps_per_epoch': self.steps_per_epoch, 'device': _device_name()}

  def _save(self, state, epoch, test_acc, latest: bool, best: bool):
    self.checkpointer.save(epoch, _state_dict(self.dp.to_host(state)), self._meta(epoch),
                           latest=latest, best_metric=test_acc if best else None)

  def run(self) -> Dict[str, Any]:
    config = self.config
    state = self.dp.replicate(self.host_state)
    self.compile_all(state)  # each segment of a resumed run reports its own compile time
    stop_at = config.num_epochs
    if config.get('max_epochs_this_run', 0):
      stop_at = min(stop_at, self.start_epoch + config.max_epochs_this_run)
    train_images, train_time = 0, 0.0
    test = {'accuracy': float('nan')}
    for epoch in range(self.start_epoch, stop_at):
      t0 = time.perf_counter()
      state, train, seconds, images = self.train_epoch(state, epoch)
      if not math.isfinite(train['loss']):
        kept = self.checkpointer.latest_epoch()
        raise TrainingDiverged(
            f'training loss became {train["loss"]} in epoch {epoch + 1}; stopped. The last good '
            f'checkpoint (epoch {kept}) is kept in {self.workdir}/checkpoints. Lower '
            'config.learning_rate or enable gradient clipping (config.grad_clip).')
      train_images += images
      train_time += seconds
      last = epoch + 1 == config.num_epochs
      record = {'epoch': epoch + 1, 'train_loss': train['loss'],
                'train_accuracy': train['accuracy'],
                'learning_rate': float(
                    self.learning_rate((epoch + 1) * self.steps_per_epoch - 1)),
                'epoch_train_s': seconds, 'img_per_s': images / seconds}
      if last or (epoch + 1) % config.eval_every_epochs == 0:
        test = self.evaluate(state)
        record.update(test_loss=test['loss'], test_accuracy=test['accuracy'])
      self.train_s += time.perf_counter() - t0
      self.records.log_epoch(record)
      new_best = 'test_accuracy' in record and record['test_accuracy'] > self.best_acc
      if new_best:
        self.best_acc = record['test_accuracy']
      periodic = (config.checkpoint_every_epochs > 0
                  and (epoch + 1) % config.checkpoint_every_epochs == 0)
      if periodic or last or epoch + 1 == stop_at or new_best:
        self._save(state, epoch + 1, record.get('test_accuracy'),
                   latest=periodic or last or epoch + 1 == stop_at, best=new_best)
      if self.is_chief:
        tqdm.write(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                            for k, v in record.items()))
      if periodic:
        self.records.plot()
    self.final_state = state
    self.records.plot()
    self.records.close()
    finished = stop_at == config.num_epochs
    summary = {
        'config': config.get('name', 'config'),
        'final_test_accuracy': test['accuracy'] if finished else float('nan'),
        'best_test_accuracy': self.best_acc, 'epochs': stop_at, 'train_s': self.train_s,
        'compile_s': self.compile_s,
        'img_per_s': train_images / train_time if train_time else 0.0,
        'device': _device_name(), 'finished': finished}
    if self.is_chief:
      print(records.summary_line(summary['config'], summary['final_test_accuracy'],
                                 summary['best_test_accuracy'], summary['epochs'],
                                 summary['train_s'], summary['compile_s'],
                                 summary['img_per_s'], summary['device']), flush=True)
    self.checkpointer.close()
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict."""
  return Trainer(config, workdir).run()


# --- Evaluation and prediction of saved models ---------------------------------------------------

def load_for_inference(config: ml_collections.ConfigDict, workdir: Optional[str] = None,
                       which: str = 'latest', torch_checkpoint: Optional[str] = None):
  """(model, variables) from a workdir checkpoint or an original PyTorch checkpoint."""
  if torch_checkpoint:
    from flax_seresnet import torch_bridge
    state_dict = torch_bridge.read_state_dict(torch_checkpoint)
    model = model_from_config(torch_bridge.infer_model_config(state_dict),
                              dtype=config.model.dtype)
    return model, torch_bridge.load_torch_checkpoint(state_dict, model)
  if not workdir:
    raise ConfigError('give --workdir (a training run) or --torch_checkpoint PATH to evaluate.')
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  meta = checkpointer.restore_meta(which)
  if meta is None:
    raise FileNotFoundError(f'no {which} checkpoint in {workdir}: train first, or give '
                            '--torch_checkpoint PATH.')
  saved = ml_collections.ConfigDict(meta['config'])
  s = _build(saved, load_data=False, steps_per_epoch=int(meta['steps_per_epoch']))
  restored, _ = checkpointer.restore(_state_dict(jax.device_get(s.state)), which)
  state = _from_state_dict(jax.device_get(s.state), restored)
  checkpointer.close()
  model = model_from_config(saved.model)
  return model, jax.device_get(steps.eval_variables(state))


def _predict_batches(model, variables, images: np.ndarray, batch_size: int, flip_tta: bool):
  """Yields (logits-argmax) for images, in order, on the default device."""
  fn = jax.jit(functools.partial(steps.predict_step, apply_fn=model.apply, flip_tta=flip_tta))
  variables = jax.device_put(variables)
  preds = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:  # one shape, one compilation
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out = fn(variables, {'images': chunk})
    preds.append(np.asarray(out)[:batch_size - pad])
  return np.concatenate(preds) if preds else np.zeros((0,), np.int64)


def evaluate(config: ml_collections.ConfigDict, workdir: Optional[str] = None,
             which: str = 'latest', torch_checkpoint: Optional[str] = None) -> float:
  """Test accuracy (%) of a saved model on the whole test set."""
  model, variables = load_for_inference(config, workdir, which, torch_checkpoint)
  data = input_pipeline.load_dataset(config)
  preds = _predict_batches(model, variables, data.test_images, config.eval_batch_size,
                           config.eval_flip_tta)
  return 100.0 * float(np.mean(preds == data.test_labels))


def predict(config: ml_collections.ConfigDict, input_path: str, output_csv: str,
            workdir: Optional[str] = None, which: str = 'latest',
            torch_checkpoint: Optional[str] = None) -> int:
  """Writes `ID,Labels` predictions for an unlabeled pickle; returns the number of rows."""
  images, ids = input_pipeline.load_unlabeled(input_path)
  out_dir = os.path.dirname(os.path.abspath(output_csv))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f'--output {output_csv}: folder {out_dir} does not exist.')
  model, variables = load_for_inference(config, workdir, which, torch_checkpoint)
  preds = _predict_batches(model, variables, images, config.eval_batch_size,
                           config.eval_flip_tta)
  tmp = output_csv + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['ID', 'Labels'])
    for i, p in zip(ids.tolist(), preds.tolist()):
      writer.writerow([i, int(p)])
  os.replace(tmp, output_csv)  # never a half-written CSV
  return len(ids)
