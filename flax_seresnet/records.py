"""A run's records in its workdir: metrics.jsonl (one line per epoch), TensorBoard events and
curves.png; the summary line. Only process 0 writes, and only once per epoch.

The checkpoint's history is the truth: a resume rewrites metrics.jsonl from it, so a file that
was cut short, damaged, deleted or written after the last checkpoint is rebuilt.
"""
import io
import json
import os
import time

from flax_seresnet import files, storage
from flax_seresnet.errors import UserError


class RunRecords:

  def __init__(self, workdir: str, history: list, enabled: bool = True, name: str = ''):
    """Continues `history` (a resumed run's, from its checkpoint; [] for a new run): the run's
    list of epoch records, which its owner extends before each `log_epoch`."""
    self.workdir, self.history, self.enabled, self.name = workdir, history, enabled, name
    self.metrics_path = os.path.join(workdir, 'metrics.jsonl')
    self._events = None
    if enabled:
      files.remove_stale_temporaries(workdir, ('config.json', 'metrics.jsonl', 'curves.png'))
      events = os.path.join(workdir, 'tensorboard')
      if os.path.lexists(events) and not os.path.isdir(events):  # found now, not after an epoch
        kind = 'a file, not a folder' if os.path.isfile(events) else 'not a folder'
        raise UserError(f'{events} (the TensorBoard events) is {kind}: move it away, or use '
                        'another --workdir.')
      files.write_file(self.metrics_path, ''.join(json.dumps(r) + '\n' for r in self.history),
                       'the metrics file')

  def log_epoch(self, record: dict) -> None:
    if not self.enabled:
      return
    files.append_line(self.metrics_path, json.dumps(record), 'the metrics file')
    # Imported here: tensorboardX imports torch when it is installed (seconds at every start).
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=key, simple_value=value)
                                         for key, value in record.items()
                                         if key != 'epoch' and not isinstance(value, str)])
    folder = os.path.join(self.workdir, 'tensorboard')
    try:  # written here, not in tensorboardX's writer thread, so that errors surface here
      if self._events is None:
        os.makedirs(folder, exist_ok=True)
        self._events = EventsWriter(os.path.join(folder, 'events'), f'.{os.getpid()}')
      self._events.write_event(event_pb2.Event(wall_time=time.time(), step=record['epoch'],
                                               summary=summary))
      self._events.flush()
    except OSError as e:
      raise UserError(f'could not write TensorBoard events to {folder} {storage.describe(e)}, '
                      'then rerun the same command to resume.') from None

  def plot(self) -> None:
    """Loss and accuracy per epoch, train, validation (when held out) and test, into curves.png, titled with the run's
    name and its latest test accuracy."""
    if not (self.enabled and self.history):
      return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, unit in zip(axes, ('loss', 'accuracy'), ('cross-entropy', 'accuracy (%)')):
      for split in ('train', 'val', 'test'):
        points = [(r['epoch'], r[f'{split}_{metric}']) for r in self.history
                  if f'{split}_{metric}' in r]
        if points:
          ax.plot(*zip(*points), label=split, marker='o' if len(points) < 20 else None)
      ax.set(xlabel='epoch', ylabel=unit, title=metric)
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
      ax.grid(alpha=0.3)
      ax.legend()
    fig.suptitle(self._title())
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=100)
    plt.close(fig)
    files.write_file(os.path.join(self.workdir, 'curves.png'), png.getvalue(), 'the plot')

  def _title(self) -> str:
    tested = [r for r in self.history if 'test_accuracy' in r]
    accuracy = (f': test accuracy {tested[-1]["test_accuracy"]:.2f}% at epoch '
                f'{tested[-1]["epoch"]}' if tested else '')
    return f'{self.name or "run"}, {self.history[-1]["epoch"]} epochs{accuracy}'

  def close(self):
    if self._events is not None:
      try:
        self._events.close()
      except OSError:
        pass  # every event was flushed when written


def summary_line(summary: dict) -> str:
  """The one machine-readable line a run ends with; a run stopped before its last epoch (by
  max_epochs_this_run) says so and gives its latest accuracy instead of a final one. `best_on`
  names the set that chose the best epoch (a summary without it: the test set); `commit` and
  `config_hash` (identity.py) come when the summary has them."""
  accuracy = (f"final_test_accuracy={summary['final_test_accuracy']:.2f} "
              if summary.get('finished', True) else
              f"unfinished=epoch_{summary['epochs']}_of_{summary['num_epochs']} "
              f"last_test_accuracy={summary['last_test_accuracy']:.2f} ")
  best_on = summary.get('best_on', 'test')
  identity = ''.join(f'{key}={summary[key]} ' for key in ('commit', 'config_hash')
                     if key in summary)
  return (f"summary: config={summary['config']} {accuracy}"
          f"best_{best_on}_accuracy={summary[f'best_{best_on}_accuracy']:.2f} best_on={best_on} "
          f"epochs={summary['epochs']} "
          f"train_s={summary['train_s']:.0f} compile_s={summary['compile_s']:.0f} "
          f"img_per_s={summary['img_per_s']:.0f} {identity}"
          f"device={summary['device'].replace(' ', '_')}")
