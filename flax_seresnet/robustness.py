"""Accuracy under distribution shift, CIFAR-10-C style (Hendrycks & Dietterich, ICLR 2019).

  evaluate_robustness(config, workdir, checkpoint, torch_checkpoint, input_dir, output_dir,
                      stop, progress) -> the stdout line

evaluates a saved model on the clean test set and on every corruption x severity 1..5: the
official CIFAR-10-C files when `input_dir` is given (source 'cifar10-c'), else corruptions
generated in memory from the test set with input_pipeline.corruptions, seeded by config.seed
(source 'generated': CIFAR-10-C-like, not the published images, and labelled so everywhere).
Writes robustness.json, robustness.csv and robustness.png into `output_dir`, each whole.

mean: the mean accuracy over the corruptions x 5 severities present; relative: 100 * mean /
clean; worst: the corruption of the lowest accuracy averaged over its 5 severities.
"""
import csv
import io
import json
import os
import time

import numpy as np
from absl import logging
from tqdm import tqdm

import input_pipeline
from flax_seresnet import config as config_lib
from flax_seresnet import files, identity, inference, interrupt
from flax_seresnet.errors import ConfigError, Interrupted

OUTPUTS = ('robustness.json', 'robustness.csv', 'robustness.png')
COLUMNS = ('corruption', 'severity', 'accuracy', 'loss', 'count', 'source')


def evaluate_robustness(config, workdir=None, checkpoint: str = 'latest', torch_checkpoint=None,
                        input_dir=None, output_dir=None, stop=interrupt.NEVER,
                        progress: bool = True) -> str:
  """Evaluates, writes the three files into `output_dir`, returns the summary line."""
  config_lib.validate(config)
  paths = _targets(output_dir, workdir, input_dir, torch_checkpoint)
  source = 'cifar10-c' if input_dir else 'generated'
  official = input_pipeline.open_cifar10c(input_dir) if input_dir else None
  model, variables, card = inference.load_model(config, workdir, checkpoint, torch_checkpoint)
  images, labels = input_pipeline.load_dataset(config, splits=('test',))[2:]
  names = official.names if official else input_pipeline.CORRUPTIONS
  if official and (len(official.labels) != len(labels) or (official.labels != labels).any()):
    logging.warning('robustness: the labels of %s are not those of the test set (%d vs %d '
                    'images): clean and corrupted accuracies are of different images.',
                    input_dir, len(official.labels), len(labels))
  sets = _sets(images, labels, names, official, config.seed)
  evaluators = {}

  def evaluate(set_images, set_labels):
    if len(set_labels) not in evaluators:  # one compilation per set size
      evaluators[len(set_labels)] = inference.evaluator(config, model, variables,
                                                        len(set_labels))
    return evaluators[len(set_labels)](set_images, set_labels, stop, progress=False)

  rows = _run(sets, 1 + 5 * len(names), evaluate, stop, progress)
  for row in rows:
    row['source'] = source
  summary = summarise(rows, source)
  _write(paths, rows, summary, card, config, official)
  return summary_line(summary)


def _targets(output_dir, workdir, input_dir, torch_checkpoint) -> dict:
  """The three output paths, checked before any work; `output_dir` made if missing."""
  if not output_dir:
    raise ConfigError('--mode robustness needs --output FOLDER (for robustness.json, .csv and '
                      '.png).')
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise ConfigError(f'--output {output_dir} is not a folder: give a folder to write the '
                      'robustness files into.')
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--output {output_dir} cannot be made ({e.strerror}): give a writable '
                      'folder.') from None
  paths = {name: os.path.join(output_dir, name) for name in OUTPUTS}
  for path in paths.values():
    files.check_target(path, '--output', protect=(input_dir, torch_checkpoint), workdir=workdir)
  return paths


def _sets(images, labels, names, official, seed):
  """(corruption, severity, images, labels) for the clean set (severity 0), then each
  corruption x severity 1..5, made or read only when its turn comes."""
  yield 'clean', 0, images, labels
  for name in names:
    blocks = input_pipeline.load_corruption(official, name) if official else None
    for severity in input_pipeline.SEVERITIES:
      if official:
        yield name, severity, blocks[severity - 1], official.labels
      else:
        yield name, severity, input_pipeline.corrupt(images, name, severity, seed), labels


def _run(sets, total: int, evaluate, stop, progress: bool) -> list:
  """The evaluations, under one progress bar; an estimate of the time left after the first
  corrupted set (the clean one includes the compilation). A stop request between two
  evaluations raises Interrupted before anything is written."""
  rows, start = [], None
  bar = tqdm(total=total, desc='robustness', disable=None if progress else True,
             dynamic_ncols=True, leave=False)
  with bar:
    for corruption, severity, images, labels in sets:
      if stop.requested:
        raise Interrupted(f'{stop.requested} received: stopped the robustness evaluation after '
                          f'{len(rows)} of {total} evaluations; nothing written.')
      rows.append({'corruption': corruption, 'severity': severity,
                   **evaluate(images, labels)})
      bar.update(1)
      if len(rows) == 1:
        start = time.monotonic()
      elif len(rows) == 2:
        each = time.monotonic() - start
        logging.info('robustness: %d evaluations; the first corrupted set took %.1f s, so about '
                     '%.1f min in all', total, each, each * (total - 1) / 60)
  return rows


def summarise(rows: list, source: str) -> dict:
  """Clean accuracy, the mean over the corrupted sets, relative (% of clean), the worst
  corruption (by its mean over severities)."""
  clean = rows[0]
  corrupted = [r for r in rows if r['severity']]
  mean = float(np.mean([r['accuracy'] for r in corrupted]))
  by_name = {}
  for r in corrupted:
    by_name.setdefault(r['corruption'], []).append(r['accuracy'])
  worst = min(by_name, key=lambda name: np.mean(by_name[name]))
  return {'source': source, 'clean_accuracy': clean['accuracy'], 'mean_accuracy': mean,
          'relative': 100 * mean / clean['accuracy'] if clean['accuracy'] else 0.0,
          'worst': worst, 'worst_accuracy': float(np.mean(by_name[worst])),
          'corruption_means': {k: float(np.mean(v)) for k, v in by_name.items()}}


def summary_line(s: dict) -> str:
  return (f'robustness: source={s["source"]} clean={s["clean_accuracy"]:.2f} '
          f'mean={s["mean_accuracy"]:.2f} relative={s["relative"]:.2f} '
          f'worst={s["worst"]}:{s["worst_accuracy"]:.2f}')


def _write(paths, rows, summary, card, config, official) -> None:
  """The heatmap and the table first, the JSON (the record of the whole) last."""
  text = io.StringIO()
  writer = csv.DictWriter(text, COLUMNS, lineterminator='\n')
  writer.writeheader()
  writer.writerows({**r, 'accuracy': f'{r["accuracy"]:.4f}', 'loss': f'{r["loss"]:.6f}'}
                   for r in rows)
  missing = [n for n in input_pipeline.cifar10c.OFFICIAL if n not in summary['corruption_means']]
  # The code and the settings of this evaluation; the card has those of the model's run.
  record = {**summary, 'line': summary_line(summary), **identity.of(config), 'model': card,
            'seed': None if official else config.seed,
            'input': str(official.folder) if official else None,
            'missing_corruptions': missing, 'results': rows}
  files.write_file(paths['robustness.png'], heatmap(rows, summary), '--output')
  files.write_file(paths['robustness.csv'], text.getvalue(), '--output')
  files.write_file(paths['robustness.json'], json.dumps(record, indent=1) + '\n', '--output')


def heatmap(rows: list, summary: dict) -> bytes:
  """PNG: accuracy by corruption (rows) x severity (columns), clean and mean in the title."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = list(summary['corruption_means'])
  grid = np.full((len(names), 5), np.nan)
  for r in rows:
    if r['severity']:
      grid[names.index(r['corruption']), r['severity'] - 1] = r['accuracy']
  fig, ax = plt.subplots(figsize=(6, 1.2 + 0.35 * len(names)))
  image = ax.imshow(grid, cmap='viridis', vmin=0, vmax=100, aspect='auto')
  for (i, j), value in np.ndenumerate(grid):
    ax.text(j, i, f'{value:.1f}', ha='center', va='center', fontsize=7,
            color='white' if value < 50 else 'black')
  ax.set_xticks(range(5), [str(s) for s in input_pipeline.SEVERITIES])
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.set_xlabel('severity')
  ax.set_title(f'accuracy (%) under corruption ({summary["source"]})\nclean '
               f'{summary["clean_accuracy"]:.2f}, mean {summary["mean_accuracy"]:.2f}',
               fontsize=9)
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  return buffer.getvalue()
