"""Per-epoch records in the workdir: metrics.jsonl, TensorBoard events, curves.png, summary.

Only process 0 writes. Everything here runs once per epoch, never per step.
"""
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging


class RunRecords:
  """Appends one JSON line and one set of TensorBoard scalars per epoch; draws the curves."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self.history: List[Dict[str, Any]] = []
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
      except ImportError:  # optional on machines without tensorboardX
        logging.warning('tensorboardX is not installed: no TensorBoard event files.')

  def restore(self, history: List[Dict[str, Any]]) -> None:
    """Picks up the history of a resumed run (metrics.jsonl already holds those lines)."""
    self.history = list(history)
    if self.enabled:
      # Drop lines of epochs after the checkpoint (written before a crash), so the file and
      # the history agree.
      last = history[-1]['epoch'] if history else 0
      path = os.path.join(self.workdir, 'metrics.jsonl')
      if os.path.exists(path):
        with open(path) as f:
          kept = [line for line in f if line.strip() and json.loads(line)['epoch'] <= last]
        with open(path, 'w') as f:
          f.writelines(kept)

  def log_epoch(self, metrics: Dict[str, Any]) -> None:
    self.history.append(metrics)
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(metrics) + '\n')
    if self._tb is not None:
      for key, value in metrics.items():
        if key != 'epoch' and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, metrics['epoch'])
      self._tb.flush()

  def plot(self) -> Optional[str]:
    """Draws loss and accuracy per epoch into curves.png; returns its path."""
    if not self.enabled or not self.history:
      return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [m['epoch'] for m in self.history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (('train_loss', 'train'), ('test_loss', 'test')):
      points = [(e, m[key]) for e, m in zip(epochs, self.history) if key in m]
      if points:
        ax_loss.plot(*zip(*points), label=label)
    for key, label in (('train_accuracy', 'train'), ('test_accuracy', 'test')):
      points = [(e, m[key]) for e, m in zip(epochs, self.history) if key in m]
      if points:
        ax_acc.plot(*zip(*points), label=label)
    ax_loss.set(xlabel='epoch', ylabel='cross-entropy', title='loss')
    ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', title='accuracy')
    for ax in (ax_loss, ax_acc):
      ax.grid(alpha=0.3)
      ax.legend()
    fig.tight_layout()
    path = os.path.join(self.workdir, 'curves.png')
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

  def close(self):
    if self._tb is not None:
      self._tb.close()


def summary_line(name: str, final_acc: float, best_acc: float, epochs: int, train_s: float,
                 compile_s: float, img_per_s: float, device: str) -> str:
  """The one machine-readable line a run ends with."""
  device = device.replace(' ', '_')
  return (f'summary: config={name} final_test_accuracy={final_acc:.2f} '
          f'best_test_accuracy={best_acc:.2f} epochs={epochs} train_s={train_s:.0f} '
          f'compile_s={compile_s:.0f} img_per_s={img_per_s:.0f} device={device}')
