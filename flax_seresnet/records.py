"""A run's records in its workdir: metrics.jsonl (one line per epoch), TensorBoard events and
curves.png. Only process 0 writes, and only once per epoch, never per step."""
import json
import logging as std_logging
import os

from tensorboardX import SummaryWriter


class RunRecords:

  def __init__(self, workdir: str, history: list, enabled: bool = True):
    """Continues `history` (a resumed run's, from its checkpoint; [] for a new run). Lines of
    metrics.jsonl after it (epochs trained after the last checkpoint, then lost) are dropped."""
    self.workdir, self.history, self.enabled = workdir, list(history), enabled
    self._tb = None
    path = os.path.join(workdir, 'metrics.jsonl')
    if enabled and os.path.exists(path):
      with open(path) as f:
        lines = [line for line in f if line.strip()]
      with open(path, 'w') as f:
        f.writelines(lines[:len(self.history)])

  def log_epoch(self, record: dict) -> None:
    self.history.append(record)
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    self._tb = self._tb or SummaryWriter(os.path.join(self.workdir, 'tensorboard'))
    for key, value in record.items():
      if key != 'epoch':
        self._tb.add_scalar(key, value, record['epoch'])
    self._tb.flush()

  def plot(self) -> None:
    """Loss and accuracy per epoch, train and test, into curves.png."""
    if not (self.enabled and self.history):
      return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, unit in zip(axes, ('loss', 'accuracy'), ('cross-entropy', 'accuracy (%)')):
      for split in ('train', 'test'):
        points = [(r['epoch'], r[f'{split}_{metric}']) for r in self.history
                  if f'{split}_{metric}' in r]
        if points:
          ax.plot(*zip(*points), label=split)
      ax.set(xlabel='epoch', ylabel=unit, title=metric)
      ax.grid(alpha=0.3)
      ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(self.workdir, 'curves.png'), dpi=100)
    plt.close(fig)

  def close(self):
    if self._tb is not None:
      self._tb.close()


def summary_line(summary: dict) -> str:
  """The one machine-readable line a run ends with."""
  return (f"summary: config={summary['config']} "
          f"final_test_accuracy={summary['final_test_accuracy']:.2f} "
          f"best_test_accuracy={summary['best_test_accuracy']:.2f} epochs={summary['epochs']} "
          f"train_s={summary['train_s']:.0f} compile_s={summary['compile_s']:.0f} "
          f"img_per_s={summary['img_per_s']:.0f} device={summary['device'].replace(' ', '_')}")


def log_to_stderr() -> None:
  """The command line's log: this project's lines, plain, on stderr (INFO and up); other
  libraries' (orbax's above all, which logs through absl too) only from ERROR up."""
  handler = std_logging.StreamHandler()  # not absl's handler: it exists only under app.run
  handler.setFormatter(std_logging.Formatter('%(message)s'))
  handler.addFilter(lambda record: record.levelno >= std_logging.ERROR or any(
      part in record.pathname for part in ('flax_seresnet', 'input_pipeline', 'main.py')))
  logger = std_logging.getLogger('absl')
  logger.handlers, logger.propagate = [handler], False
  logger.setLevel(std_logging.INFO)
  std_logging.getLogger().setLevel(std_logging.WARNING)  # e.g. jax's INFO about absent TPUs
