"""flax-seresnet: train, evaluate, predict or export the SE-ResNet on CIFAR-10.

  python main.py --config configs/seresnet.py --workdir runs/seresnet       train (or resume)
  python main.py --config configs/smoke.py --workdir runs/smoke             a CPU check, minutes
  python main.py --config configs/seresnet.py --config.num_epochs=5 ...     any setting, overridden
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode eval [--checkpoint best]
  python main.py --config configs/seresnet.py --mode eval --torch_checkpoint ckpt.pth
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode predict \\
      --input photos/ --output predictions.csv
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode export --output model/
  python main.py --config configs/seresnet.py --workdir runs/seresnet --mode robustness --output rob/
  python main.py --list_config [--config ...]     every setting, its value and meaning

Results go to stdout (the summary line, test_accuracy=..., predictions); the log goes to stderr
and, for training, to WORKDIR/run.log. Exit codes: 0 done; 2 an input mistake, an unusable file
or a full disk (one line `error: ...`); 3 training diverged; 4 a process of a multi-process run
was lost; 75 stopped by SIGINT, SIGTERM or SIGHUP after saving (the same command resumes);
128+N a second signal N stopped it at once. Any other exception is a bug and keeps its traceback.
"""
import contextlib
import difflib
import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from flax_seresnet import streams

USAGE = __doc__
MODES = ('train', 'eval', 'predict', 'export', 'robustness')
HELP_FLAGS = ('-h', '--help', '-help', '--helpshort', '-?')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file, e.g. configs/seresnet.py, or a shipped one by '
    'name (seresnet, fast, smoke). Any setting can be overridden with --config.KEY=VALUE; '
    '--list_config lists them all.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics, plots and run.log.')
flags.DEFINE_enum('mode', 'train', MODES, 'What to do (robustness: accuracy under the CIFAR-10-C '
                  'corruptions, generated or read from --input, into the folder --output).')
flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best'],
                  'eval/predict/export: which checkpoint of --workdir to use.')
flags.DEFINE_string('torch_checkpoint', None,
                    'eval/predict/export: an original PyTorch checkpoint (.pth) instead of '
                    '--workdir.')
flags.DEFINE_string('input', None, 'predict: the unlabeled pickle {data, ids}, an image file '
                    '(PNG, JPEG, BMP, WebP, GIF, TIFF), a folder or a .txt list of them.')
flags.DEFINE_string('output', None, 'predict: the CSV to write; export, robustness: the folder '
                    'to write.')
flags.DEFINE_integer('top_k', 3, 'predict: show the top K classes of the first few inputs.',
                     lower_bound=0)
flags.DEFINE_bool('list_config', False, 'Print every setting (of --config, else the defaults) '
                  'with what it means, then exit.')
flags.DEFINE_bool('dry_run', False, 'Check the flags, the config and the data folder, say what '
                  'would run, then exit (trains nothing).')


def fail(message, code: int = 2, prefix: str = 'error'):
  """The one last line of a run that cannot go on (also kept in run.log), then the exit."""
  streams.say(f'{prefix}: {" ".join(str(message).split())}')
  sys.exit(code)


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def _overrides(argv) -> list:
  return [arg.split('=')[0][2:] for arg in argv if arg.startswith('--config.')]


def _unknown_key(argv) -> str:
  """The first --config.KEY that is no setting, with the nearest setting's name."""
  from flax_seresnet.config import SETTINGS  # pylint: disable=import-outside-toplevel
  for name in _overrides(argv):
    key = name[len('config.'):]
    if key not in SETTINGS:
      near = difflib.get_close_matches(key, SETTINGS, n=1)
      hint = f' (did you mean --config.{near[0]}?)' if near else ''
      return (f'--{name} is not a setting{hint}: `python main.py --list_config` lists every '
              'setting')
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
            'of a config file such as configs/seresnet.py, or a name: seresnet, fast, smoke')
  if isinstance(e, AttributeError) and 'get_config' in text:
    return f'--config {path} has no get_config(): see configs/seresnet.py for the form'
  if in_file:
    return (f'--config {path} could not be loaded ({type(e).__name__}: {text}): fix the file; '
            'its get_config() must return an ml_collections.ConfigDict')
  unknown = _unknown_key(argv)
  if unknown or isinstance(e, (KeyError, AttributeError)):
    return unknown or f'{text}: `python main.py --list_config` lists every setting'
  named = re.search(r'--?(config\.[\w.]+)', text)
  overrides = _overrides(argv)
  which = named.group(1) if named else overrides[0] if len(overrides) == 1 else ''
  return (f'--{which or "config.*"} could not be used ({type(e).__name__}: {text}): '
          '`python main.py --list_config` shows each setting with a value of its type')


def _shipped_config(argv):
  """--config NAME (or a path that does not exist here) also finds a shipped config by name, so
  that the installed `flax-seresnet --config fast` works from any folder; a path that exists
  here wins."""
  path = _config_path(argv)
  if not path or os.path.isfile(path):  # a folder named `smoke` here is no config file
    return argv
  import configs  # pylint: disable=import-outside-toplevel
  shipped = os.path.join(os.path.dirname(configs.__file__), os.path.basename(path))
  shipped += '' if shipped.endswith('.py') else '.py'
  if not os.path.isfile(shipped):
    return argv
  return [shipped if arg == path else arg.replace(f'--config={path}', f'--config={shipped}')
          for arg in argv]


def _flag_problem(e: flags.Error, argv) -> str:
  """One line naming the flag that is wrong, its allowed values, and nothing else."""
  text = ' '.join(str(e).split())
  flag = re.match(r"(?:flag --|Unknown command line flag ')([\w.]+)", text)
  if flag and flag.group(1).startswith('config.'):
    return _config_problem(e.__context__ or e, argv)
  if flag and text.startswith('Unknown'):
    return f'{text}: `python main.py --help` lists the flags'
  return text.replace('flag --', '--', 1) if flag else _config_problem(e.__context__ or e, argv)


def parse_flags(argv):
  """absl's parsing, with a bad flag or config file reported in one line, not a traceback."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    streams.results().write(f'{USAGE}\nFlags:\n{FLAGS.module_help(__name__)}\n')
    sys.exit(0)
  argv = _shipped_config(argv)
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.get('name')  # raises here if the file did not load
  except flags.Error as e:
    fail(_flag_problem(e, argv))
  except Exception as e:  # pylint: disable=broad-except  # the config file's own errors
    fail(_config_problem(e, argv))
  if FLAGS.config is not None and not isinstance(FLAGS.config, ConfigDict):
    fail(f'--config {_config_path(argv)}: get_config() returned a '
         f'{type(FLAGS.config).__name__}; it must return an ml_collections.ConfigDict')
  if not FLAGS.list_config and FLAGS.config is None:
    fail('--config is required: e.g. --config configs/seresnet.py (--help shows the usage, '
         '--list_config the settings)')
  return rest


def _check_mode_flags():
  """The flags each mode needs, checked before any model loads or data is read (a mistake
  found after minutes of work is a minute lost)."""
  from flax_seresnet import files  # pylint: disable=import-outside-toplevel
  from flax_seresnet.errors import ConfigError  # pylint: disable=import-outside-toplevel
  mode = FLAGS.mode
  if mode == 'train' and not FLAGS.workdir:
    raise ConfigError('--workdir is required for training: e.g. --workdir runs/seresnet')
  if mode == 'predict' and not (FLAGS.input and FLAGS.output):
    raise ConfigError('--mode predict needs --input (a pickle, images or a folder) and '
                      '--output CSV.')
  if mode in ('export', 'robustness') and not FLAGS.output:
    raise ConfigError(f'--mode {mode} needs --output FOLDER.')
  if mode != 'train' and not (FLAGS.workdir or FLAGS.torch_checkpoint):
    raise ConfigError(f'--mode {mode} needs --workdir (a training run) or --torch_checkpoint '
                      'PATH.')
  if mode == 'predict':
    files.check_output_folder(FLAGS.output, '--output')
  if FLAGS.input and not os.path.exists(FLAGS.input):
    raise ConfigError(f'--input {FLAGS.input} does not exist: fix the path.')


def _dry_run(results):
  """Checks what can be checked without reading the data or compiling, says what would run."""
  import input_pipeline  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  source = ''
  if config.dataset == 'cifar10' and FLAGS.mode in ('train', 'eval'):
    source = f' on {input_pipeline.check_cifar10_folder(config)}'
  print(f'would {FLAGS.mode} with config {config.name}{source}'
        f'{f" in {FLAGS.workdir}" if FLAGS.workdir else ""}: flags, config and data folder are '
        'valid', file=results)


def run_mode(config, stop, results):
  """The work of --mode; its result on `results` (stdout)."""
  from flax_seresnet import inference, records, train  # pylint: disable=import-outside-toplevel
  if FLAGS.mode == 'train':
    summary = train.train_and_evaluate(config, FLAGS.workdir, stop)
    print(records.summary_line(summary), file=results)
  elif FLAGS.mode == 'eval':
    result = inference.evaluate(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.torch_checkpoint,
                                stop)
    print(f'test_accuracy={result["accuracy"]:.2f}', file=results)
  elif FLAGS.mode == 'predict':
    skipped = []
    rows, top = inference.predict(config, FLAGS.input, FLAGS.output, FLAGS.workdir,
                                  FLAGS.checkpoint, FLAGS.torch_checkpoint, stop, FLAGS.top_k,
                                  skipped=skipped)
    for name, best in top:
      print(f'{name}: ' + ', '.join(f'{c} {100 * p:.1f}%' for c, p in best), file=results)
    many = len(skipped) > 1
    print(f'wrote {rows} predictions to {FLAGS.output}' + (
        f'; {len(skipped)} file{"s" * many} skipped, {"each " * many}named on stderr with the '
        'reason (`warning: skipped: ...`)' if skipped else ''), file=results)
  elif FLAGS.mode == 'robustness':
    from flax_seresnet import robustness  # pylint: disable=import-outside-toplevel
    print(robustness.evaluate_robustness(config, FLAGS.workdir, FLAGS.checkpoint,
                                         FLAGS.torch_checkpoint, FLAGS.input, FLAGS.output, stop,
                                         config.progress_bar), file=results)
  else:
    from flax_seresnet import export  # pylint: disable=import-outside-toplevel
    card = export.export(config, FLAGS.output, FLAGS.workdir, FLAGS.checkpoint,
                         FLAGS.torch_checkpoint, stop)
    print(f'exported {", ".join(card["files"])} and {export.CARD} to {FLAGS.output}',
          file=results)


def _bug_of_one(watch):
  """A bug in one process of several: its traceback, then the others are told (they stop with a
  line naming it) and the process exits at once, as JAX's shutdown would wait for them."""
  traceback.print_exc()
  sys.stderr.flush()
  watch.close(failed=True)
  os._exit(1)  # pylint: disable=protected-access  # Python's code for an uncaught exception


def _work(stop, results):
  """Validates, then runs the mode, several processes watching each other; ends with one line
  and the documented exit code on a known error (kept in run.log too, when training)."""
  from flax_seresnet import config as config_lib  # pylint: disable=import-outside-toplevel
  from flax_seresnet import parallel  # pylint: disable=import-outside-toplevel
  from flax_seresnet.errors import ERRORS, Interrupted  # pylint: disable=import-outside-toplevel
  watch = None
  with contextlib.ExitStack() as stack:
    try:
      config_lib.validate(FLAGS.config)
      _check_mode_flags()
      if FLAGS.dry_run:
        return _dry_run(results)
      if FLAGS.mode == 'train':
        stack.enter_context(streams.log_file(os.path.join(FLAGS.workdir, 'run.log')))
      parallel.initialize_distributed(FLAGS.config.distributed)
      if parallel.jax.process_count() > 1:
        watch = parallel.PeerWatch(FLAGS.config.distributed.timeout_s)
      run_mode(FLAGS.config, stop, results)
    except ERRORS as e:
      if watch:
        watch.close(failed=not isinstance(e, Interrupted))
        streams.say(f'{getattr(e, "prefix", "error")}: {" ".join(str(e).split())}')
        os._exit(e.exit_code)  # pylint: disable=protected-access  # no wait for the others
      fail(e, e.exit_code, getattr(e, 'prefix', 'error'))
    except Exception:  # pylint: disable=broad-except
      if watch:
        watch.explain()  # a lost peer: the watch names it and exits
        _bug_of_one(watch)
      raise
    if watch:
      watch.close()


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {argv[1:]} (flags take the form --name=value; --help lists '
         'them)')
  from flax_seresnet import files, interrupt  # pylint: disable=import-outside-toplevel
  if FLAGS.output and FLAGS.mode in ('predict', 'export'):  # /dev/stdout: before fd 1 moves
    try:
      FLAGS.output = files.resolve_output(FLAGS.output)
    except files.UserError as e:
      fail(e)
  results = streams.results()
  with interrupt.StopRequest() as stop:  # from here on a signal stops the run cleanly
    if FLAGS.list_config:
      from flax_seresnet import config as config_lib  # pylint: disable=import-outside-toplevel
      print(config_lib.describe(FLAGS.config), file=results)
      return
    streams.log_to_stderr()
    _work(stop, results)


def run():
  """main.py and the console script `flax-seresnet`."""
  streams.tolerate_closed_pipes()
  app.run(main, flags_parser=parse_flags)
