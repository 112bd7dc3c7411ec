"""A workdir's checkpoints: what a save holds, and one orbax CheckpointManager that keeps the
newest K saves and the best.

Each save `<workdir>/checkpoints/<step>/` (step: optimizer steps done) holds the items `model`
(params, batch_stats and the EMA when kept: all that inference restores), `train` (step and
optimizer state: what resuming adds) and `meta` (JSON: the step, the epoch and the position in
it, the config, the metric history, and a SHA-256 of each item). Orbax writes into a temporary
folder and renames it when complete, so a kill mid-save leaves the older saves intact. A restore
checks the checksums and the step, and falls back to the newest intact save with a one-line
warning; a trainer moves a damaged save to <workdir>/damaged_checkpoints/ (kept for inspection)
so that it can write that step again.
"""
import errno
import hashlib
import os
import shutil
import time

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from flax_seresnet import storage
from flax_seresnet.errors import CheckpointError, one_line

META_KEYS = ('step', 'epoch', 'config', 'history', 'checksums')  # a save without them is damaged
# Failures of the reader, not of the save: such a save is not moved aside as damaged.
READ_PROBLEMS = (errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM)


def best_metric(metrics: dict) -> float:
  """What ranks a save for 'best': its validation accuracy when the run holds a validation set
  out (the test set then never picks a model), else its test accuracy."""
  return metrics['val_accuracy'] if 'val_accuracy' in metrics else metrics['test_accuracy']


# --- What a save holds.
def items_of(state) -> dict:
  """A host TrainState as checkpoint items: 'model' (what inference needs) and 'train'."""
  model = {'params': state.params, 'batch_stats': state.batch_stats}
  if state.ema_params is not None:
    model['ema_params'] = state.ema_params
  return {'model': model, 'train': flax.serialization.to_state_dict(
      {'step': state.step, 'opt_state': state.opt_state})}


def state_from(state, items):
  """`state` with the values of checkpoint `items`."""
  train = flax.serialization.from_state_dict({'step': state.step, 'opt_state': state.opt_state},
                                             items['train'])
  model = items['model']
  return state.replace(params=model['params'], batch_stats=model['batch_stats'],
                       ema_params=model.get('ema_params'), **train)


def model_template(variables: dict, use_ema: bool) -> dict:
  """The 'model' item's structure for a model's {'params', 'batch_stats'}."""
  template = dict(variables)
  if use_ema:
    template['ema_params'] = template['params']
  return template


def inference_variables(model_item: dict) -> dict:
  """What evaluation and inference use: the EMA of the parameters when one is kept."""
  return {'params': model_item.get('ema_params', model_item['params']),
          'batch_stats': model_item['batch_stats']}


def digest(tree) -> str:
  """SHA-256 of a pytree's leaves (paths, dtypes, shapes and bytes)."""
  sha = hashlib.sha256()
  for path, leaf in sorted(flax.traverse_util.flatten_dict(tree, sep='/').items()):
    leaf = np.ascontiguousarray(leaf)
    sha.update(f'{path}:{leaf.dtype}:{leaf.shape}'.encode())
    sha.update(leaf.tobytes())
  return sha.hexdigest()


class _Manager(ocp.CheckpointManager):
  """orbax's manager without JAX's preemption sync point: this run's own stop agreement
  (parallel.DataParallel) picks the step every process saves, and JAX's preemption service is
  off (parallel.initialize_distributed), so orbax's query of it would raise."""

  def reached_preemption(self, step: int) -> bool:
    return False


def _utf8(path: str) -> bool:
  try:
    path.encode('utf-8')
    return True
  except UnicodeEncodeError:  # a byte that is not UTF-8, kept by Python as a surrogate
    return False


class Checkpoints:
  """Saves and restores host-array items of one workdir; a context manager that closes orbax."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.read_only = read_only
    storage.quiet_background()  # orbax's threads report a failed write too: the main thread says it
    if not _utf8(self.directory):  # tensorstore takes paths as UTF-8 text only
      raise CheckpointError(f'{self.directory.encode(errors="backslashreplace").decode()}: a '
                            'checkpoint folder\'s path must be UTF-8 text (orbax cannot use other '
                            'bytes in a name): rename the folder, or use another --workdir.')
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f'{self.directory} is a file, not a folder: move it away, or use '
                            'another --workdir.')
    if not read_only:
      self._check_writable()
      if jax.process_index() == 0:
        self._remove_temporaries()  # what a kill in the middle of a save left
    options = ocp.CheckpointManagerOptions(  # no orbax clean-up thread: close() would not wait
        best_fn=best_metric, best_mode='max', read_only=read_only, create=not read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=False,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(keep),
            policies.BestN(get_metric_fn=best_metric, n=1, keep_checkpoints_without_metrics=False)]))
    self._manager = _Manager(self.directory, options=options)

  def _check_writable(self):
    """Fails now, not after an epoch, when the checkpoint folder cannot be written."""
    probe = os.path.join(self.directory, f'.write-test-{os.getpid()}')
    try:
      os.makedirs(self.directory, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('ok')
    except OSError as e:
      raise CheckpointError(f'cannot write checkpoints to {self.directory} '
                            f'{storage.describe(e)}, or use another --workdir.') from None
    finally:
      if os.path.lexists(probe):
        os.remove(probe)

  def _remove_temporaries(self, step=None):
    for name in os.listdir(self.directory):
      if '.orbax-checkpoint-tmp' in name and (step is None or name.startswith(f'{step}.')):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    self._manager.close()

  def steps(self) -> list:
    return sorted(self._manager.all_steps())

  def save(self, step: int, items: dict, meta: dict, metrics=None) -> None:
    """Saves host pytrees `items` as `step`; `metrics` ({'val_accuracy'} or {'test_accuracy'}:
    `best_metric`) rank it for 'best'."""
    meta = dict(meta, step=step, checksums={name: digest(t) for name, t in items.items()})
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    try:
      with storage.held_reports():
        self._manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args),
                           metrics=None if metrics is None else
                           {k: float(v) for k, v in metrics.items()}, force=True)
        self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      problem = storage.problem(e)
      if problem is None:
        raise
      self._remove_temporaries(step)  # what the failed save left half-written
      raise CheckpointError(
          f'could not write the checkpoint of step {step} to {self.directory} {problem}, then '
          'rerun the same command to resume from the newest checkpoint kept (steps '
          f'{self.steps()}).') from None

  def restore(self, templates: dict, which: str = 'latest'):
    """(items like `templates`, meta) of the newest intact save ('latest'), or of the best by
    `best_metric` ('best'). Damaged saves are skipped with a warning."""
    candidates = self.steps()[::-1]
    if which == 'best' and self._manager.best_step() is not None:
      candidates.remove(self._manager.best_step())
      candidates.insert(0, self._manager.best_step())
    for step in candidates:
      try:
        return self._restore(step, templates)
      except Exception as e:  # pylint: disable=broad-except  # damage takes many forms
        self._unless_storage(e, step)
        logging.warning('checkpoint %s/%d is damaged and skipped (%s)%s', self.directory, step,
                        one_line(e)[:300], '' if self.read_only else
                        f'; moved to {self._move_aside(step)}.')
    raise CheckpointError(
        f'no intact checkpoint in {self.directory}'
        f'{f" (damaged: steps {candidates})" if candidates else ""}: train first, or use '
        'another --workdir or --torch_checkpoint.')

  def _restore(self, step: int, templates: dict):
    with storage.held_reports():
      restored = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore(), **{name: ocp.args.StandardRestore(template)
                                          for name, template in templates.items()}))
    meta = restored['meta']
    if not isinstance(meta, dict) or any(key not in meta for key in META_KEYS):
      raise ValueError(f'its metadata lacks one of {META_KEYS}')
    if meta['step'] != step:
      raise ValueError(f'its metadata says step {meta["step"]}')
    for name in templates:
      if digest(restored[name]) != meta['checksums'].get(name):
        raise ValueError(f'the checksum of its {name!r} item does not match')
    return {name: restored[name] for name in templates}, meta

  def _unless_storage(self, e: Exception, step: int) -> None:
    """A save the system cannot read now (too many open files, no permission) is not damaged:
    one line, and it stays where it is."""
    problem = storage.problem(e)
    if problem and problem.code in READ_PROBLEMS:
      raise CheckpointError(f'could not read the checkpoint {self.directory}/{step} '
                            f'{problem}.') from None

  def _move_aside(self, step: int) -> str:
    target = os.path.join(self.workdir, 'damaged_checkpoints', f'{step}-{time.time():.0f}')
    try:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    except OSError as e:
      raise CheckpointError(f'could not move the damaged checkpoint {self.directory}/{step} to '
                            f'{target} {storage.describe(e)}.') from None
    self._manager.reload()
    return target
