"""Command line: train, evaluate or predict with the SE-ResNet.

  python main.py --config configs/seresnet.py --workdir runs/seresnet
  python main.py --config configs/seresnet.py --config.num_epochs=5 --config.data_dir=DIR ...
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode eval \
      [--checkpoint best]
  python main.py --config configs/seresnet.py --mode eval --torch_checkpoint ckpt.pth
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode predict \
      --input hidden_test.pkl --output predictions.csv

Only flags live here; the work is in flax_seresnet.train. A mistake in the input (a flag, a
setting, a file) ends with one line `error: ...` and exit code 2 (3: training diverged); any
other exception is a bug and keeps its traceback.
"""
import re
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


def fail(message: str, code: int = 2):
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl's parsing, with a bad flag, a config file that does not load or an unknown config key
  reported in one line instead of a traceback."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.get('name')  # raises here if the file did not load
    return rest
  except (flags.Error, KeyError, AttributeError, OSError, ValueError, TypeError) as e:
    text = str(e.args[0] if e.args else e)
    if isinstance(e, (KeyError, AttributeError)):  # an unknown key in a --config.* override
      key = re.search(r"'([^'\\]+)", text)
      hint = re.search(r'Did you mean .*?\?', text)
      text = (f'unknown config key {key.group(1) if key else text!r}'
              f'{" (" + hint.group(0) + ")" if hint else ""}: every key is listed in '
              'configs/seresnet.py')
    elif isinstance(e, OSError):
      text = (f'--config {config_flags.get_config_filename(FLAGS["config"])} could not be '
              'loaded: give the path of a config file such as configs/seresnet.py')
    fail(text)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]}')
  from flax_seresnet import config as config_lib, parallel, records, train  # jax starts here
  records.log_to_stderr()  # one line each: the start, compilation, epochs, the summary
  from flax_seresnet.errors import ConfigError, UserError
  config = FLAGS.config
  try:
    config_lib.validate(config)
    parallel.maybe_initialize_distributed(config.distributed)
    if FLAGS.mode == 'train':
      if not FLAGS.workdir:
        raise ConfigError('--workdir is required for training.')
      train.train_and_evaluate(config, FLAGS.workdir)  # ends by logging its summary line
    elif FLAGS.mode == 'eval':
      accuracy = train.evaluate(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.torch_checkpoint)
      logging.info('test_accuracy=%.2f', accuracy)
    else:
      if not FLAGS.input or not FLAGS.output:
        raise ConfigError('--mode predict needs --input PKL and --output CSV.')
      rows = train.predict(config, FLAGS.input, FLAGS.output, FLAGS.workdir, FLAGS.checkpoint,
                           FLAGS.torch_checkpoint)
      logging.info('wrote %d predictions to %s', rows, FLAGS.output)
  except UserError as e:
    fail(e, e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
