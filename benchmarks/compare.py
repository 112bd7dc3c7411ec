"""Trains the PyTorch reference and this library side by side: same data, recipe and epochs.

  python benchmarks/compare.py --epochs 40 --workdir runs/compare40
  python benchmarks/compare.py --epochs 2 --small --workdir /tmp/cmp     # a CPU check

Both sides keep CIFAR-10 on the device and augment there (random crop with 4-pixel zero
padding, flip, normalisation), so the comparison is about the frameworks, not data loaders.
The recipe is configs/seresnet.py with num_epochs=--epochs (cosine over those epochs, stepped
per epoch; SGD 0.1/0.9/5e-4; per-element clipping at 0.1; batch 128, last partial batch kept).
Writes into --workdir: the JAX run's own records, compare.md (per-epoch test accuracy, final
and best accuracy, wall time, img/s) and compare.png (both test-accuracy curves).
"""
import os
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # share the GPU with torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=40)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default='../shared/data/cifar-10-batches-py')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--small', action='store_true',
                      help='tiny network on 5000 images (a CPU check of the script)')
  parser.add_argument('--order', default='torch,jax', help='which side trains first')
  args = parser.parse_args()

  import input_pipeline
  from configs import seresnet
  from flax_seresnet import records, train
  config = seresnet.get_config()
  config.name = f'compare{args.epochs}'
  config.num_epochs = args.epochs
  config.data_dir = args.data_dir
  config.seed = args.seed
  config.checkpoint_every_epochs = 0
  model_kwargs = None
  if args.small:
    config.model.stage_blocks, config.model.widths = (1, 1, 1), (16, 32, 64)
    config.train_subset = 5000
    model_kwargs = dict(stage_blocks=(1, 1, 1), widths=(16, 32, 64))
  os.makedirs(args.workdir, exist_ok=True)
  results = {}
  for side in args.order.split(','):
    if side == 'jax':
      summary = train.train_and_evaluate(config, os.path.join(args.workdir, 'jax'))
      with open(os.path.join(args.workdir, 'jax', 'metrics.jsonl')) as f:
        history = [json.loads(line) for line in f]
      results['jax'] = dict(summary, history=history)
    else:
      import torch
      from benchmarks import torch_side
      data = input_pipeline.load_dataset(config)
      device = 'cuda' if torch.cuda.is_available() else 'cpu'
      # TF32 allowed, as PyTorch's default for cuDNN convolutions and XLA's default on GPUs.
      r = torch_side.train_torch_reference(
          data, epochs=args.epochs, device=device, seed=args.seed, allow_tf32=True,
          model_kwargs=model_kwargs)
      results['torch'] = r
      print(records.summary_line(f'torch_reference{args.epochs}', r['final_test_accuracy'],
                                 r['best_test_accuracy'], args.epochs, r['train_s'], 0.0,
                                 r['img_per_s'], r['device']), flush=True)
  write_report(results, args.workdir, args.epochs)


def write_report(results, workdir, epochs):
  jax_r, torch_r = results.get('jax'), results.get('torch')
  lines = [f'# PyTorch reference vs flax-seresnet, {epochs} epochs, same recipe', '',
           '| | PyTorch reference | flax-seresnet (JAX) |', '|---|---|---|']

  def cell(r, key, fmt):
    return format(r[key], fmt) if r and key in r else '-'

  for label, key, fmt in [('final test accuracy (%)', 'final_test_accuracy', '.2f'),
                          ('best test accuracy (%)', 'best_test_accuracy', '.2f'),
                          ('wall time, training + evaluation (s)', 'train_s', '.0f'),
                          ('training img/s', 'img_per_s', ',.0f'),
                          ('compile time (s)', 'compile_s', '.0f'),
                          ('device', 'device', 's')]:
    lines.append(f'| {label} | {cell(torch_r, key, fmt)} | {cell(jax_r, key, fmt)} |')
  lines += ['', '| epoch | PyTorch test acc | JAX test acc | PyTorch epoch s | JAX epoch s |',
            '|---|---|---|---|---|']
  by_epoch = lambda r: {h['epoch']: h for h in r['history']} if r else {}
  t, j = by_epoch(torch_r), by_epoch(jax_r)
  for e in range(1, epochs + 1):
    te, je = t.get(e, {}), j.get(e, {})
    lines.append(f"| {e} | {te.get('test_accuracy', float('nan')):.2f} | "
                 f"{je.get('test_accuracy', float('nan')):.2f} | "
                 f"{te.get('epoch_train_s', float('nan')):.1f} | "
                 f"{je.get('epoch_train_s', float('nan')):.1f} |")
  report = '\n'.join(lines) + '\n'
  with open(os.path.join(workdir, 'compare.md'), 'w') as f:
    f.write(report)
  print(report, flush=True)
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, r in (('PyTorch reference', torch_r), ('flax-seresnet (JAX)', jax_r)):
    if r:
      points = [(h['epoch'], h['test_accuracy']) for h in r['history'] if 'test_accuracy' in h]
      ax.plot(*zip(*points), label=name)
  ax.set(xlabel='epoch', ylabel='test accuracy (%)', title=f'{epochs}-epoch published recipe')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'compare.png'), dpi=100)
  with open(os.path.join(workdir, 'compare.json'), 'w') as f:
    json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  main()
