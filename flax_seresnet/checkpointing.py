"""Orbax checkpoints: the last K epochs and the best by test accuracy, with exact resume.

Layout under the workdir:
  checkpoints/<epoch>/{state, meta}   the last `keep_checkpoints` saves
  best/<epoch>/{state, meta}          the save with the highest test accuracy
`state` is the whole TrainState as host arrays (step, params, batch_stats, opt_state, EMA);
`meta` is JSON: epoch, the run's seed and RNG key data, the config, the metric history.
Orbax writes each save into a temporary folder and renames it when complete, so a process
killed mid-save leaves the previous checkpoints intact and the half-written one ignored.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import orbax.checkpoint as ocp

# Settings a run may change when it resumes: they do not affect the numbers it computes.
RESUMABLE_CHANGES = (
    'data_dir', 'download', 'progress_bar', 'eval_every_epochs', 'checkpoint_every_epochs',
    'keep_checkpoints', 'distributed', 'parallel', 'eval_batch_size', 'name', 'tfds_data_dir',
    'max_epochs_this_run', 'test_subset',
)


from flax_seresnet.errors import CheckpointError as IncompatibleCheckpointError


def _manager(directory: str, keep: int, best: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      best_fn=(lambda metrics: metrics['test_accuracy']) if best else None,
      best_mode='max')
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class Checkpointer:
  """Saves and restores training state in `workdir`."""

  def __init__(self, workdir: str, keep: int = 3):
    self.latest = _manager(os.path.join(workdir, 'checkpoints'), max(keep, 1), best=False)
    self.best = _manager(os.path.join(workdir, 'best'), 1, best=True)

  def save(self, epoch: int, host_state: Any, meta: Dict[str, Any], latest: bool = True,
           best_metric: Optional[float] = None) -> None:
    """Saves `host_state` (a NumPy pytree) for `epoch` among the latest saves and/or, given
    its test accuracy `best_metric`, as the best one."""
    def args():
      return ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                meta=ocp.args.JsonSave(meta))
    if latest:
      self.latest.save(epoch, args=args(), force=True)
    if best_metric is not None:
      self.best.save(epoch, args=args(), metrics={'test_accuracy': float(best_metric)},
                     force=True)
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def latest_epoch(self, which: str = 'latest') -> Optional[int]:
    manager = self._which(which)
    return manager.best_step() if which == 'best' else manager.latest_step()

  def restore(self, abstract_state: Any, which: str = 'latest',
              epoch: Optional[int] = None) -> Tuple[Any, Dict[str, Any]]:
    """(host_state, meta) of a save; `abstract_state` gives the tree structure and shapes."""
    manager = self._which(which)
    if epoch is None:
      epoch = self.latest_epoch(which)
    if epoch is None:
      raise FileNotFoundError(f'no {which} checkpoint in {manager.directory}.')
    restored = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_meta(self, which: str = 'latest') -> Optional[Dict[str, Any]]:
    manager = self._which(which)
    epoch = self.latest_epoch(which)
    if epoch is None:
      return None
    return manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def _which(self, which: str) -> ocp.CheckpointManager:
    if which not in ('latest', 'best'):
      raise ValueError(f"checkpoint choice {which!r} is not 'latest' or 'best'.")
    return self.latest if which == 'latest' else self.best

  def close(self):
    self.latest.close()
    self.best.close()


def config_differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = '') -> list:
  """Keys whose values differ between two config dicts, except RESUMABLE_CHANGES."""
  diffs = []
  for key in sorted(set(saved) | set(current)):
    if not prefix and key in RESUMABLE_CHANGES:
      continue
    a, b = saved.get(key, '<absent>'), current.get(key, '<absent>')
    if isinstance(a, dict) and isinstance(b, dict):
      diffs += config_differences(a, b, prefix + key + '.')
    elif _normalise(a) != _normalise(b):
      diffs.append(f'{prefix}{key}: saved {a!r}, now {b!r}')
  return diffs


def _normalise(value):
  # JSON turns tuples into lists; compare them as equal.
  return json.loads(json.dumps(value)) if isinstance(value, (tuple, list)) else value


def check_compatible(saved_config: Dict[str, Any], current_config: Dict[str, Any],
                     workdir: str) -> None:
  diffs = config_differences(saved_config, current_config)
  if diffs:
    raise IncompatibleCheckpointError(
        f'{workdir} holds a run with another config ({"; ".join(diffs[:3])}'
        f'{"; ..." if len(diffs) > 3 else ""}): resume with the same config or use a new '
        '--workdir.')
