"""Command line: train, evaluate, predict or export with the SE-ResNet.

  python main.py --config configs/seresnet.py --workdir runs/seresnet
  python main.py --config configs/seresnet.py --config.num_epochs=5 --config.data_dir=DIR ...
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode eval [--checkpoint best]
  python main.py --config configs/seresnet.py --mode eval --torch_checkpoint ckpt.pth
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode predict \
      --input hidden_test.pkl --output predictions.csv
  python main.py --list_config                   # every setting, its default and meaning

Results go to stdout (the summary line, test_accuracy=...); the log goes to stderr. Exit codes:
0 done; 2 an input mistake, an unusable file or a full disk (one line `error: ...`); 3 training
diverged; 4 a process of a multi-process run was lost; 75 stopped by SIGINT, SIGTERM or SIGHUP
after saving (the same command resumes); 128+N a second signal N stopped it at once. Any other
exception is a bug and keeps its traceback.
"""
import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import ConfigDict, config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file, e.g. configs/seresnet.py. Any setting can be '
    'overridden with --config.KEY=VALUE; --list_config lists them all.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and plots.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'export', 'robustness'],
                  'What to do (robustness: --output FOLDER, --input a CIFAR-10-C folder or none).')
flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best'],
                  'eval/predict: which checkpoint of --workdir to use.')
flags.DEFINE_string('torch_checkpoint', None,
                    'eval/predict: an original PyTorch checkpoint (.pth) instead of --workdir.')
flags.DEFINE_string('input', None, 'predict: the unlabeled pickle {data, ids}, an image file '
                    '(PNG, JPEG, BMP, WebP), a folder of them or a .txt list of them.')
flags.DEFINE_string('output', None, 'predict: the CSV to write; export: the folder to write.')
flags.DEFINE_integer('top_k', 3, 'predict: show the top K classes of the first few inputs.',
                     lower_bound=0)
flags.DEFINE_bool('list_config', False, 'Print every setting (of --config, else the defaults) '
                  'with what it means, then exit.')
flags.DEFINE_bool('dry_run', False, 'Check the flags and the config, say what would run, then '
                  'exit (reads no data).')


def fail(message, code: int = 2, prefix: str = 'error'):
  print(f'{prefix}: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(code)


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def _config_problem(e: Exception, argv) -> str:
  """One line for a config file that does not load, or a --config.KEY=VALUE that cannot be
  used."""
  path, text = _config_path(argv), ' '.join(str(e.args[0] if e.args else e).split())
  frames = traceback.extract_tb(e.__traceback__)
  in_file = isinstance(e, (SyntaxError, ImportError)) or any(
      os.path.abspath(f.filename) == os.path.abspath(path) for f in frames)
  if isinstance(e, OSError) and not in_file:
    return (f'--config {path} could not be read (no such file, or not readable): give the path '
            'of a config file such as configs/seresnet.py')
  if isinstance(e, AttributeError) and 'get_config' in text:
    return f'--config {path} has no get_config(): see configs/seresnet.py for the form'
  if in_file:
    return (f'--config {path} could not be loaded ({type(e).__name__}: {text}): fix the file; '
            'its get_config() must return an ml_collections.ConfigDict')
  if isinstance(e, (KeyError, AttributeError)):
    key = re.search(r"'([^'\\]+)", text)
    hint = re.search(r'Did you mean .*?\?', text)
    return (f'unknown config key {key.group(1) if key else text!r}'
            f'{" (" + hint.group(0) + ")" if hint else ""}: `python main.py --list_config` '
            'lists every key')
  overrides = [arg.split('=')[0] for arg in argv if arg.startswith('--config.')]
  which = overrides[0] if len(overrides) == 1 else f'one of {", ".join(overrides)}'
  return (f'{which} could not be used ({type(e).__name__}: {text}): `python main.py '
          '--list_config` shows each key with a value of its type')


def _shipped_config(argv):
  """--config NAME (or a path that does not exist here) also finds a shipped config by name, so
  that the installed `flax-seresnet --config fast` works from any folder."""
  path = _config_path(argv)
  if not path or os.path.exists(path):
    return argv
  import configs  # pylint: disable=import-outside-toplevel
  shipped = os.path.join(os.path.dirname(configs.__file__), os.path.basename(path))
  shipped += '' if shipped.endswith('.py') else '.py'
  if not os.path.isfile(shipped):
    return argv
  return [shipped if arg == path else arg.replace(f'--config={path}', f'--config={shipped}')
          for arg in argv]


def parse_flags(argv):
  """absl's parsing, with a bad flag or config file reported in one line, not a traceback."""
  argv = _shipped_config(argv)
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get('name')  # raises here if the file did not load
    if FLAGS.config is not None and not isinstance(FLAGS.config, ConfigDict):
      fail(f'--config {_config_path(argv)}: get_config() returned a '
           f'{type(FLAGS.config).__name__}; it must return an ml_collections.ConfigDict')
  except flags.Error as e:
    fail(_config_problem(e.__context__, argv) if e.__context__ else e)
  except Exception as e:  # pylint: disable=broad-except  # the config file's own errors
    fail(_config_problem(e, argv))
  if not FLAGS.list_config and FLAGS.config is None:
    fail('--config is required: e.g. --config configs/seresnet.py (--list_config lists the '
         'settings)')
  return rest


def results_stream():
  """A handle of its own on stdout for the results; stdout (fd 1) itself then points at stderr,
  so that nothing a library prints there (Gloo's connection lines, say) lands among them."""
  sys.stdout.flush()
  results = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  return results


def run_mode(config, stop, results):
  """The work of --mode; its result on `results` (stdout)."""
  from flax_seresnet import inference, records, train
  from flax_seresnet.errors import ConfigError
  if FLAGS.mode == 'train':
    if not FLAGS.workdir:
      raise ConfigError('--workdir is required for training.')
    print(records.summary_line(train.train_and_evaluate(config, FLAGS.workdir, stop)),
          file=results)
  elif FLAGS.mode == 'eval':
    result = inference.evaluate(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.torch_checkpoint,
                                stop)
    print(f'test_accuracy={result["accuracy"]:.2f}', file=results)
  elif FLAGS.mode == 'predict':
    if not FLAGS.input or not FLAGS.output:
      raise ConfigError('--mode predict needs --input (a pickle, images or a folder) and '
                        '--output CSV.')
    rows, top = inference.predict(config, FLAGS.input, FLAGS.output, FLAGS.workdir,
                                  FLAGS.checkpoint, FLAGS.torch_checkpoint, stop, FLAGS.top_k)
    for name, best in top:
      print(f'{name}: ' + ', '.join(f'{c} {100 * p:.1f}%' for c, p in best), file=results)
    print(f'wrote {rows} predictions to {FLAGS.output}', file=results)
  elif FLAGS.mode == 'robustness':
    from flax_seresnet import robustness
    print(robustness.evaluate_robustness(config, FLAGS.workdir, FLAGS.checkpoint,
                                         FLAGS.torch_checkpoint, FLAGS.input, FLAGS.output, stop,
                                         config.progress_bar), file=results)
  else:
    from flax_seresnet import export
    if not FLAGS.output:
      raise ConfigError('--mode export needs --output FOLDER.')
    card = export.export(config, FLAGS.output, FLAGS.workdir, FLAGS.checkpoint,
                         FLAGS.torch_checkpoint)
    print(f'exported {", ".join(card["files"])} and {export.CARD} to {FLAGS.output}',
          file=results)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]}')
  from flax_seresnet import interrupt
  results = results_stream()
  with interrupt.StopRequest() as stop:  # from here on a signal stops the run cleanly
    from flax_seresnet import config as config_lib, parallel, records
    from flax_seresnet.errors import ERRORS, Interrupted
    if FLAGS.list_config:
      print(config_lib.describe(FLAGS.config), file=results)
      return
    records.log_to_stderr()
    watch = None
    try:
      config_lib.validate(FLAGS.config)
      if FLAGS.dry_run:
        print(f'would {FLAGS.mode} with config {FLAGS.config.name}'
              f'{f" in {FLAGS.workdir}" if FLAGS.workdir else ""}: flags and config are valid',
              file=results)
        return
      parallel.initialize_distributed(FLAGS.config.distributed)
      if parallel.jax.process_count() > 1:
        watch = parallel.PeerWatch(FLAGS.config.distributed.timeout_s)
      run_mode(FLAGS.config, stop, results)
    except ERRORS as e:
      if watch:
        watch.close(failed=not isinstance(e, Interrupted))
        print(f'{getattr(e, "prefix", "error")}: {" ".join(str(e).split())}', file=sys.stderr,
              flush=True)
        os._exit(e.exit_code)  # pylint: disable=protected-access  # no wait for the others
      fail(e, e.exit_code, getattr(e, 'prefix', 'error'))
    except Exception as e:  # pylint: disable=broad-except
      if watch:
        watch.explain(e)  # a lost peer: the watch names it and exits
      raise
    if watch:
      watch.close()


def run():
  """The console script `flax-seresnet` (pip install puts it on PATH)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
