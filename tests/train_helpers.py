"""Tiny training configurations and a worker script for the training tests.

Run as a script, it trains a tiny config and writes the final parameters to an .npz, so tests
can start it in a subprocess with forced host devices or as one of several JAX processes:
  python tests/train_helpers.py OUT.npz WORKDIR key=value ...
"""
import os
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_CIFAR10 = REPO.parent / 'shared' / 'data' / 'cifar-10-batches-py'
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def tiny_config(**overrides):
  from configs import smoke
  config = smoke.get_config()
  config.name = 'tiny'
  config.data_dir = str(REAL_CIFAR10)
  config.model.stage_blocks = (1, 1, 1)
  config.model.widths = (8, 16, 16)
  config.train_subset = 512
  config.test_subset = 500
  config.batch_size = 64
  config.eval_batch_size = 250
  config.num_epochs = 3
  config.checkpoint_every_epochs = 1
  config.progress_bar = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def flat_params(tree):
  import flax
  import numpy as np
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def main(argv):
  import ast
  import numpy as np
  out, workdir, *pairs = argv[1:]
  overrides = {}
  for pair in pairs:
    key, value = pair.split('=', 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  from flax_seresnet import parallel, train
  config = tiny_config(**overrides)
  parallel.maybe_initialize_distributed(config.distributed)
  trainer = train.Trainer(config, workdir)
  trainer.run()
  import jax
  if jax.process_index() == 0:
    host = trainer.dp.to_host(trainer.final_state)
    arrays = flat_params({'params': host.params, 'batch_stats': host.batch_stats})
    np.savez(out, **arrays)


if __name__ == '__main__':
  main(sys.argv)
