"""One change at a time against a recipe, at equal epochs: what each change buys.

  python benchmarks/ablate.py --base configs/fast.py --seeds 1 --out runs/ablate \
      --change label_smoothing=0.0 --change nesterov=False --change eval_flip_tta=False
  python benchmarks/ablate.py --base configs/smoke.py --set num_epochs=1 --out /tmp/ablate ...

Each run is the base config with one `key=value` change (values are Python literals), trained
from scratch with `train_and_evaluate`; the base itself runs first. Prints, and appends to
OUT/ablate.md, one line per run: the change, each seed's final test accuracy, the mean, the
difference to the base, training seconds and images/s. Keep every GPU run's table in
docs/fast.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import ast
import importlib.util
import statistics


def load_config(path):
  spec = importlib.util.spec_from_file_location('base_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def parse_change(text):
  key, value = text.split('=', 1)
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--base', default='configs/fast.py')
  parser.add_argument('--change', action='append', default=[], help='key=value, repeatable')
  parser.add_argument('--seeds', type=int, default=1)
  parser.add_argument('--out', required=True)
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--set', action='append', default=[],
                      help='key=value applied to every run, the base included')
  args = parser.parse_args(argv)
  from flax_seresnet import records, streams, train
  streams.log_to_stderr()
  os.makedirs(args.out, exist_ok=True)
  lines = [f'| change (against {args.base}) | seeds | final test acc | mean | vs base | '
           'training s | img/s |', '|---|---|---|---|---|---|---|']
  print('\n'.join(lines), flush=True)
  base_mean = None
  for number, change in enumerate([''] + args.change):
    accuracies, seconds, speeds = [], [], []
    for seed in range(args.seeds):
      config = load_config(args.base)
      config.update_from_flattened_dict(dict(
          [parse_change(c) for c in args.set] + ([parse_change(change)] if change else []),
          seed=seed, checkpoint_every_epochs=0, progress_bar=False,
          **({'data_dir': args.data_dir} if args.data_dir else {})))
      summary = train.train_and_evaluate(config, os.path.join(args.out, f'run{number}_seed{seed}'))
      print(records.summary_line(summary), file=sys.stderr, flush=True)
      accuracies.append(summary['final_test_accuracy'])
      seconds.append(summary['train_s'])
      speeds.append(summary['img_per_s'])
    mean = statistics.mean(accuracies)
    base_mean = mean if base_mean is None else base_mean
    line = (f"| {change or 'none (the base)'} | {args.seeds} | "
            f"{', '.join(f'{a:.2f}' for a in accuracies)} | {mean:.2f} | {mean - base_mean:+.2f} | "
            f'{statistics.mean(seconds):.0f} | {statistics.mean(speeds):,.0f} |')
    lines.append(line)
    print(line, flush=True)
  with open(os.path.join(args.out, 'ablate.md'), 'a') as f:
    f.write('\n'.join(lines) + '\n\n')


if __name__ == '__main__':
  main()
