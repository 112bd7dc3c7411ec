"""A workdir's checkpoints: one orbax CheckpointManager keeping the last K epochs and the best.

Each save `<workdir>/checkpoints/<epoch>/` holds the items `model` (params, batch_stats and the
EMA when kept: all that inference restores), `train` (step and optimizer state: what resuming
adds) and `meta` (JSON: epoch, config, metric history, and a SHA-256 of each item). Orbax
writes into a temporary folder and renames it when complete, so a kill mid-save leaves the older
saves intact. A restore checks the checksums and the epoch, and falls back to the newest intact
save with a one-line warning. A state with NaN or infinite values is never written.
"""
import errno
import fcntl
import hashlib
import json
import os

import flax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from flax_seresnet.errors import CheckpointError, TrainingDiverged, UserError, one_line

# Settings a run may change when it resumes: they do not change the numbers training computes.
RESUMABLE_CHANGES = ('data_dir', 'download', 'progress_bar', 'eval_every_epochs',
                     'checkpoint_every_epochs', 'keep_checkpoints', 'distributed', 'parallel',
                     'eval_batch_size', 'name', 'tfds_data_dir', 'max_epochs_this_run',
                     'test_subset', 'eval_flip_tta')


def digest(tree) -> str:
  """SHA-256 of a pytree's leaves (paths, dtypes, shapes and bytes)."""
  sha = hashlib.sha256()
  for path, leaf in sorted(flax.traverse_util.flatten_dict(tree, sep='/').items()):
    leaf = np.ascontiguousarray(leaf)
    sha.update(f'{path}:{leaf.dtype}:{leaf.shape}'.encode())
    sha.update(leaf.tobytes())
  return sha.hexdigest()


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in flax.traverse_util.flatten_dict(tree).values()
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _os_error(e: BaseException):
  while e is not None and not isinstance(e, OSError):
    e = e.__cause__ or e.__context__
  return e


class Checkpoints:
  """Saves and restores host-array items of one workdir."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    accuracy = lambda metrics: metrics['test_accuracy']
    options = ocp.CheckpointManagerOptions(
        best_fn=accuracy, best_mode='max', read_only=read_only, create=not read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(keep),
            policies.BestN(get_metric_fn=accuracy, n=1, keep_checkpoints_without_metrics=False)]))
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._damaged = set()  # epochs found damaged, skipped (and reported) once

  def epochs(self) -> list:
    return sorted(self._manager.all_steps())

  def diverged(self, what: str):
    """Raises TrainingDiverged: `what` happened, and which checkpoint is the last good one."""
    kept = self.epochs()
    last = (f'Epoch {kept[-1]} is the last good checkpoint in {self.directory}' if kept
            else 'No checkpoint was kept')
    raise TrainingDiverged(f'{what}. {last}. Lower config.learning_rate or clip the gradients '
                           '(config.grad_clip).')

  def save(self, epoch: int, items: dict, meta: dict, test_accuracy=None) -> None:
    """Saves host pytrees `items` for `epoch`; `test_accuracy` ranks it for 'best'."""
    if not all(_finite(tree) for tree in items.values()):
      self.diverged(f'the state after epoch {epoch} holds NaN or infinite values, so it was not '
                    'saved')
    meta = dict(meta, epoch=epoch, checksums={name: digest(t) for name, t in items.items()})
    args = {name: ocp.args.StandardSave(tree) for name, tree in items.items()}
    try:
      self._manager.save(epoch, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **args),
                         metrics=None if test_accuracy is None else
                         {'test_accuracy': float(test_accuracy)}, force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # orbax wraps I/O errors in several types
      cause = _os_error(e)
      if cause is None:
        raise
      raise CheckpointError(
          f'could not write the checkpoint of epoch {epoch} to {self.directory} '
          f'({cause.strerror or one_line(cause)}): free some space or use another --workdir; the '
          f'earlier checkpoints (epochs {self.epochs()}) are intact.') from None

  def restore(self, templates: dict, which: str = 'latest'):
    """(items like `templates`, meta) of the newest intact save ('latest'), or of the best by
    test accuracy ('best'). Damaged saves are skipped with a warning."""
    candidates = self.epochs()[::-1]
    if which == 'best' and self._manager.best_step() is not None:
      candidates.remove(self._manager.best_step())
      candidates.insert(0, self._manager.best_step())
    for epoch in [e for e in candidates if e not in self._damaged]:
      try:
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore(), **{name: ocp.args.StandardRestore(template)
                                            for name, template in templates.items()}))
        meta = restored['meta']
        if meta.get('epoch') != epoch:
          raise ValueError(f'its metadata says epoch {meta.get("epoch")}')
        for name in templates:
          if digest(restored[name]) != meta['checksums'][name]:
            raise ValueError(f'the checksum of its {name!r} item does not match')
        return {name: restored[name] for name in templates}, meta
      except Exception as e:  # a damaged save surfaces as many exception types
        self._damaged.add(epoch)
        logging.warning('checkpoint %s/%d is damaged and skipped (%s).', self.directory, epoch,
                        one_line(e)[:300])
    raise CheckpointError(
        f'no intact checkpoint in {self.directory}'
        f'{f" (damaged: epochs {candidates})" if candidates else ""}: train first, or use '
        'another --workdir or --torch_checkpoint.')

  def close(self):
    self._manager.close()


def check_compatible(saved: dict, current: dict, workdir: str) -> None:
  """Refuses to resume a run whose config differs where it changes the numbers."""
  def differences(a, b, prefix=''):
    for key in sorted(set(a) | set(b)):
      if prefix or key not in RESUMABLE_CHANGES:
        x, y = a.get(key, '<absent>'), b.get(key, '<absent>')
        if isinstance(x, dict) and isinstance(y, dict):
          yield from differences(x, y, f'{prefix}{key}.')
        elif json.loads(json.dumps(x)) != json.loads(json.dumps(y)):  # tuples vs JSON lists
          yield f'{prefix}{key}: saved {x!r}, now {y!r}'
  diffs = list(differences(saved, current))
  if diffs:
    raise CheckpointError(f'{workdir} holds a run with another config ({"; ".join(diffs[:3])}'
                          f'{"; ..." if len(diffs) > 3 else ""}): resume with the same config or '
                          'use a new --workdir.')


class WorkdirLock:
  """One workdir, one trainer: an exclusive flock on <workdir>/.lock. The kernel releases it
  when its holder dies, so the stale lock of a dead process is simply taken over."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    try:
      os.makedirs(workdir, exist_ok=True)
      self._file = open(self.path, 'a+')
    except OSError as e:
      raise UserError(f'--workdir {workdir} cannot be written ({e.strerror}): choose another '
                      'folder.') from None
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      self._file.seek(0)
      holder = self._file.read().strip() or 'unknown'
      self._file.close()
      raise UserError(f'--workdir {workdir} is in use by another trainer (pid {holder}): wait '
                      'for it to finish, or use another --workdir.') from None
    self._file.truncate(0)
    self._file.write(str(os.getpid()))
    self._file.flush()

  def release(self):
    self._file.close()  # closing releases the flock
