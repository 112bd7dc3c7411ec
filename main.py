"""Command line: train, evaluate or predict with the SE-ResNet.

  python main.py --config configs/seresnet.py --workdir runs/seresnet
  python main.py --config configs/seresnet.py --config.num_epochs=5 --config.data_dir=DIR ...
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode eval [--checkpoint best]
  python main.py --config configs/seresnet.py --mode eval --torch_checkpoint ckpt.pth
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode predict \
      --input hidden_test.pkl --output predictions.csv

Only flags live here; the work is in flax_seresnet.train.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and plots.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'], 'What to do.')
flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best'],
                  'eval/predict: which checkpoint of --workdir to use.')
flags.DEFINE_string('torch_checkpoint', None,
                    'eval/predict: an original PyTorch checkpoint (.pth) instead of --workdir.')
flags.DEFINE_string('input', None, 'predict: the unlabeled pickle {data, ids}.')
flags.DEFINE_string('output', None, 'predict: the CSV to write (header ID,Labels).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from flax_seresnet import parallel, train  # jax starts here, after flags are parsed
  from flax_seresnet.errors import ConfigError, UserError

  config = FLAGS.config
  # Mistakes in the input get one line; anything else (a bug) keeps its traceback.
  user_errors = (UserError, FileNotFoundError)
  try:
    parallel.maybe_initialize_distributed(config.distributed)
    if FLAGS.mode == 'train':
      if not FLAGS.workdir:
        raise ConfigError('--workdir is required for training.')
      train.train_and_evaluate(config, FLAGS.workdir)  # ends by printing its summary line
    elif FLAGS.mode == 'eval':
      accuracy = train.evaluate(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.torch_checkpoint)
      print(f'test_accuracy={accuracy:.2f}', flush=True)
    else:
      if not FLAGS.input or not FLAGS.output:
        raise ConfigError('--mode predict needs --input PKL and --output CSV.')
      rows = train.predict(config, FLAGS.input, FLAGS.output, FLAGS.workdir, FLAGS.checkpoint,
                           FLAGS.torch_checkpoint)
      print(f'wrote {rows} predictions to {FLAGS.output}', flush=True)
  except user_errors as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.exit(getattr(e, 'exit_code', 2))


if __name__ == '__main__':
  app.run(main)
