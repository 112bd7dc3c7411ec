"""Joins the JAX and PyTorch rows of benchmarks/throughput.py runs made on one machine into one
table with ratios to the PyTorch published step:
  python benchmarks/merge_throughput.py jax.json torch.json
"""
import json
import sys


def main(paths):
  runs = [json.load(open(p)) for p in paths]
  rows = [r for run in runs for r in run['rows']]
  reference = next((r['img_per_s'] for r in rows
                    if r['framework'] == 'torch' and r['variant'] == 'eager_fp32'), None)
  print(f"Train-step throughput on {runs[0]['device']} (published network)\n")
  print('| framework | variant | batch | img/s | vs PyTorch published | note |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    ratio = f"{r['img_per_s'] / reference:.2f}x" if reference else '-'
    print(f"| {r['framework']} | {r['variant']} | {r['batch']} | {r['img_per_s']:,.0f} | {ratio} "
          f"| {r['note']} |")


if __name__ == '__main__':
  main(sys.argv[1:])
