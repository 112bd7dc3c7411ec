"""Trains the PyTorch reference and this library side by side: same data, recipe and epochs,
several seeds a side, interleaved in one process, and says whether they train to the same
accuracy.

  python benchmarks/compare.py --epochs 20 --seeds 3 --workdir runs/compare20
  python benchmarks/compare.py --epochs 1 --seeds 2 --small --workdir /tmp/cmp   # a CPU check

Both sides keep CIFAR-10 on the device and augment there (random crop with 4-pixel zero padding,
flip, normalisation), so the comparison is about the frameworks, not data loaders. The recipe is
configs/seresnet.py with num_epochs=--epochs: SGD 0.1/0.9/5e-4, per-element clipping at 0.1,
batch 128 with the last partial batch kept, cosine stepped per epoch with T_max=--cosine_epochs
(default: --epochs; the original code hard-codes 200). Runs go seed by seed, the two sides one
after the other (--order), so slow drifts of the machine hit both.

The verdict: a 95% confidence interval of the difference of the mean final test accuracies
(JAX - PyTorch, Welch's t); "the same" when it contains 0, "equivalent" when it lies within
+-margin. Writes into --workdir: each JAX run's records, compare.md (every run, means, standard
deviations, the interval, the training-time ratio), compare.json and compare.png.
"""
import os
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # share the GPU with torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import statistics


def welch_interval(a, b, confidence=0.95):
  """(difference of means a - b, low, high) of Welch's t interval."""
  from scipy import stats
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  difference = statistics.mean(a) - statistics.mean(b)
  if va + vb == 0:
    return difference, difference, difference
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  half = stats.t.ppf(0.5 + confidence / 2, df) * (va + vb) ** 0.5
  return difference, difference - half, difference + half


def verdict(low, high, margin):
  within = -margin <= low and high <= margin
  if low <= 0 <= high:
    return (f'the same accuracy: the interval contains 0 and lies within +-{margin} points'
            if within else f'no difference found, but the interval is wider than +-{margin} '
            'points: more seeds are needed to call the two equivalent')
  if within:
    return f'equivalent within +-{margin} points, though the interval excludes 0'
  return (f'different: {"JAX" if low > 0 else "PyTorch"} trains to a higher accuracy (the '
          f'interval excludes 0 and +-{margin} points)')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=20)
  parser.add_argument('--seeds', type=int, default=3, help='runs per side (seeds 0..N-1)')
  parser.add_argument('--cosine_epochs', type=int, default=0, help="T_max; 0: --epochs")
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default='', help="'' resolves as the library does")
  parser.add_argument('--margin', type=float, default=0.3, help='equivalence margin, points')
  parser.add_argument('--small', action='store_true', help='tiny network (a CPU check)')
  parser.add_argument('--train_subset', type=int, default=0, help='first N training images')
  parser.add_argument('--order', default='torch,jax', help='which side trains first')
  args = parser.parse_args(argv)
  if args.seeds < 2:
    parser.error('--seeds must be at least 2 for an interval')

  import input_pipeline
  from configs import seresnet
  from flax_seresnet import records, streams, train
  streams.log_to_stderr()
  config = seresnet.get_config()
  config.update_from_flattened_dict({
      'name': f'compare{args.epochs}', 'num_epochs': args.epochs, 'data_dir': args.data_dir,
      'cosine_epochs': args.cosine_epochs, 'checkpoint_every_epochs': 0,
      'train_subset': args.train_subset, 'progress_bar': False})
  model_kwargs = None
  if args.small:
    model_kwargs = dict(stage_blocks=(1, 1, 1), widths=(8, 16, 16))
    config.model.stage_blocks, config.model.widths = (1, 1, 1), (8, 16, 16)
    config.eval_batch_size = 128  # a padded 1000-image batch would dominate a tiny CPU run
  os.makedirs(args.workdir, exist_ok=True)
  data = input_pipeline.load_dataset(config)
  runs = {'torch': [], 'jax': []}
  for seed in range(args.seeds):
    for side in args.order.split(','):
      if side == 'jax':
        config.seed = seed
        result = train.train_and_evaluate(config, os.path.join(args.workdir, f'jax_seed{seed}'))
        print(records.summary_line(result), flush=True)
        with open(os.path.join(args.workdir, f'jax_seed{seed}', 'metrics.jsonl')) as f:
          result['history'] = [json.loads(line) for line in f]
      else:
        import torch
        from benchmarks import torch_side
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        # TF32 allowed, as PyTorch's default for cuDNN convolutions and XLA's default on GPUs.
        result = torch_side.train_torch_reference(
            data, epochs=args.epochs, cosine_epochs=args.cosine_epochs, device=device,
            seed=seed, allow_tf32=True, model_kwargs=model_kwargs, progress=False)
        result.update(config=f'torch_reference{args.epochs}', epochs=args.epochs, compile_s=0.0)
        print(records.summary_line(result), flush=True)
      runs[side].append(dict(result, seed=seed))
  write_report(runs, args)


def write_report(runs, args):
  final = {side: [r['final_test_accuracy'] for r in rs] for side, rs in runs.items()}
  seconds = {side: statistics.mean(r['train_s'] for r in rs) for side, rs in runs.items()}
  difference, low, high = welch_interval(final['jax'], final['torch'])
  lines = [f'# PyTorch reference vs flax-seresnet: {args.epochs} epochs, {args.seeds} seeds a side',
           '', f"Recipe: configs/seresnet.py, cosine T_max={args.cosine_epochs or args.epochs}, "
           f"device {runs['jax'][0]['device']}.", '',
           *(['A tiny network and few epochs (--small): these figures check the script; they '
              'compare neither accuracy nor speed.', ''] if args.small else []),
           '| side | seed | final test acc | best test acc | training + eval s | train img/s |',
           '|---|---|---|---|---|---|']
  for side, label in (('torch', 'PyTorch'), ('jax', 'JAX')):
    for r in runs[side]:
      lines.append(f"| {label} | {r['seed']} | {r['final_test_accuracy']:.2f} | "
                   f"{r['best_test_accuracy']:.2f} | {r['train_s']:.0f} | {r['img_per_s']:,.0f} |")
  lines += ['', '| side | mean final acc | std | mean training + eval s |', '|---|---|---|---|']
  for side, label in (('torch', 'PyTorch'), ('jax', 'JAX')):
    lines.append(f'| {label} | {statistics.mean(final[side]):.2f} | '
                 f'{statistics.stdev(final[side]):.2f} | {seconds[side]:.0f} |')
  lines += ['', f'Difference JAX - PyTorch: {difference:+.2f} points, 95% interval (Welch) '
            f'[{low:+.2f}, {high:+.2f}]: {verdict(low, high, args.margin)}.',
            f"Training time: PyTorch / JAX = {seconds['torch'] / seconds['jax']:.2f}x."]
  report = '\n'.join(lines) + '\n'
  with open(os.path.join(args.workdir, 'compare.md'), 'w') as f:
    f.write(report)
  with open(os.path.join(args.workdir, 'compare.json'), 'w') as f:
    json.dump({'runs': runs, 'difference': difference, 'interval': [low, high],
               'margin': args.margin}, f, indent=1, default=str)
  print(report, flush=True)
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for (side, label), color in zip((('torch', 'PyTorch reference'), ('jax', 'flax-seresnet')),
                                  ('tab:orange', 'tab:blue')):
    for i, r in enumerate(runs[side]):
      points = [(h['epoch'], h['test_accuracy']) for h in r['history'] if 'test_accuracy' in h]
      ax.plot(*zip(*points), color=color, alpha=0.7, label=label if i == 0 else None)
  ax.set(xlabel='epoch', ylabel='test accuracy (%)', title=f'{args.epochs}-epoch published recipe')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, 'compare.png'), dpi=100)


if __name__ == '__main__':
  main()
