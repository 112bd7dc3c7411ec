"""Tiny training configurations, and a worker script for the tests that need other processes.

  python tests/train_helpers.py OUT WORKDIR key=value ...
trains a tiny config and writes its initial and final parameters and BatchNorm statistics to
OUT (keys 'before/...' and 'after/...'); with parallel=jit,pmap, for each mode in OUT_<mode>.npz
and WORKDIR_<mode>.
"""
import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def tiny_config(data_dir='', **overrides):
  """A network of a few thousand parameters on the learnable fake data: 5 steps of 64 images
  per epoch, 3 epochs, a checkpoint every epoch, one device."""
  from configs import seresnet
  config = seresnet.get_config()
  config.update_from_flattened_dict({
      'name': 'tiny', 'data_dir': str(data_dir), 'model.stage_blocks': (1, 1, 1),
      'model.widths': (8, 16, 16), 'batch_size': 64, 'eval_batch_size': 64, 'num_epochs': 3,
      'checkpoint_every_epochs': 1, 'progress_bar': False, 'num_devices': 1,
      'learning_rate': 0.05, **overrides})
  return config


def flat_variables(tree) -> dict:
  import flax
  import numpy as np
  return {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def main(argv):
  out, workdir, *pairs = argv[1:]
  overrides = {}
  for pair in pairs:
    key, value = pair.split('=', 1)
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  import os
  import signal
  import jax
  import numpy as np
  from flax_seresnet import parallel, train
  kill_after = overrides.pop('kill_after_epoch', None)
  if kill_after:  # a hard kill right after the checkpoint of that epoch is written
    save = train.Trainer._save

    def save_then_die(self, *args):
      save(self, *args)
      if self.position.epoch == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    train.Trainer._save = save_then_die
  modes = str(overrides.pop('parallel', 'jit')).split(',')
  for mode in modes:  # one process start for several modes: starting JAX takes seconds
    config = tiny_config(**overrides, parallel=mode)
    if mode == modes[0]:
      parallel.initialize_distributed(config.distributed)
    suffix = f'_{mode}' if len(modes) > 1 else ''
    with train.Trainer(config, workdir + suffix) as trainer:
      states = {'before': trainer.dp.to_host(trainer.state)}
      trainer.run()
      states['after'] = trainer.dp.to_host(trainer.state)
    if jax.process_index() == 0:
      np.savez(f'{out}{suffix}.npz', **flat_variables(
          {name: {'params': s.params, 'batch_stats': s.batch_stats} for name, s in states.items()}))


if __name__ == '__main__':
  main(sys.argv)
