"""--mode robustness end to end through the real command line on a tiny trained model: the one
stdout line, and the three files agreeing with it; generated corruptions and an official-layout
CIFAR-10-C folder; a stop between evaluations writes nothing."""
import csv
import json
import re

import numpy as np
import pytest

from flax_seresnet import robustness
from flax_seresnet.errors import Interrupted
from input_pipeline import CORRUPTIONS
from tests.test_cifar10c import write_cifar10c
from tests.harness import TINY, assert_log_then_one_error, run_cli

LINE = re.compile(r'robustness: source=(cifar10-c|generated) clean=(\d+\.\d\d) mean=(\d+\.\d\d) '
                  r'relative=(\d+\.\d\d) worst=(\w+):(\d+\.\d\d)\n')


@pytest.fixture(scope='module')
def trained(learnable_cifar10_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('robust') / 'run'
  common = [*TINY, f'--config.data_dir={learnable_cifar10_dir}', '--config.num_epochs=1',
            f'--workdir={workdir}']
  result = run_cli(*common)
  assert result.returncode == 0, result.stderr[-3000:]
  return common


def check_outputs(stdout: str, folder, source: str, names) -> dict:
  """The line matches the files: the JSON's numbers, the CSV's rows, the PNG."""
  match = LINE.fullmatch(stdout)
  assert match, stdout
  assert match.group(1) == source
  record = json.loads((folder / 'robustness.json').read_text())
  assert record['line'] + '\n' == stdout and record['source'] == source
  assert re.fullmatch(r'[0-9a-f]{40}(-dirty)?|v\d.*', record['commit'])
  assert re.fullmatch(r'[0-9a-f]{12}', record['config_hash'])  # this evaluation's settings
  assert re.fullmatch(r'[0-9a-f]{12}', record['model']['config_hash'])  # the trained run's
  rows = list(csv.DictReader((folder / 'robustness.csv').open()))
  assert [(r['corruption'], int(r['severity'])) for r in rows] == [('clean', 0)] + [
      (n, s) for n in names for s in range(1, 6)]
  assert {r['source'] for r in rows} == {source}
  accuracies = [float(r['accuracy']) for r in rows]
  assert f'{accuracies[0]:.2f}' == match.group(2)
  mean = np.mean(accuracies[1:])
  assert f'{mean:.2f}' == match.group(3)
  assert f'{100 * mean / accuracies[0]:.2f}' == match.group(4)
  by_name = {n: np.mean(accuracies[1 + 5 * i:6 + 5 * i]) for i, n in enumerate(names)}
  assert match.group(5) == min(by_name, key=by_name.get)
  assert f'{by_name[match.group(5)]:.2f}' == match.group(6)
  assert all(int(r['count']) > 0 for r in rows)
  assert (folder / 'robustness.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  return record


def test_generated_corruptions_through_the_cli(trained, tmp_path):
  result = run_cli(*trained, '--mode=robustness', f'--output={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = check_outputs(result.stdout, tmp_path / 'out', 'generated', CORRUPTIONS)
  assert record['seed'] == 0 and record['missing_corruptions'] == ['frost']
  assert 'robustness: 91 evaluations; the first corrupted set took' in result.stderr
  # The same seed, the same figures; clean is --mode eval's accuracy.
  again = run_cli(*trained, '--mode=robustness', f'--output={tmp_path / "again"}')
  assert again.stdout == result.stdout
  clean = run_cli(*trained, '--mode=eval')
  assert clean.stdout == f'test_accuracy={record["clean_accuracy"]:.2f}\n'


def test_official_files_through_the_cli(trained, learnable_cifar10_dir, tmp_path):
  folder = write_cifar10c(tmp_path / 'c', names=('fog', 'frost'), block=20)
  out = tmp_path / 'out'
  result = run_cli(*trained, '--mode=robustness', f'--input={folder}', f'--output={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = check_outputs(result.stdout, out, 'cifar10-c', ('frost', 'fog'))
  assert [r['count'] for r in record['results']] == [128] + [20] * 10
  assert record['seed'] is None and record['input'] == str(folder)


def test_mistakes_end_in_one_line(trained, tmp_path):
  assert_log_then_one_error(run_cli(*trained, '--mode=robustness'), 2,
                            '--mode robustness needs --output FOLDER')
  (tmp_path / 'file').write_text('x')
  assert_log_then_one_error(run_cli(*trained, '--mode=robustness',
                                    f'--output={tmp_path / "file"}'), 2, 'is not a folder')
  result = run_cli(*trained, '--mode=robustness', f'--input={tmp_path}',
                   f'--output={tmp_path / "out"}')
  assert_log_then_one_error(result, 2, 'labels.npy does not exist')
  assert not list((tmp_path / 'out').iterdir())


class StopAfter:
  """A stop request that arrives once `count` evaluations have run."""

  def __init__(self, count):
    self.count, self.seen = count, 0

  @property
  def requested(self):
    return 'SIGTERM' if self.seen >= self.count else None


def test_a_stop_between_evaluations_writes_nothing(trained, learnable_cifar10_dir, tmp_path,
                                                   monkeypatch):
  stop = StopAfter(3)
  real = robustness.inference.evaluator

  def counting(*args):
    evaluate = real(*args)

    def wrapped(*a, **k):
      result = evaluate(*a, **k)
      stop.seen += 1
      return result
    return wrapped
  monkeypatch.setattr(robustness.inference, 'evaluator', counting)
  from configs import smoke
  config = smoke.get_config()
  config.model.widths, config.num_devices, config.batch_size = (8, 16, 16), 1, 64
  config.data_dir, config.eval_batch_size, config.train_subset = (str(learnable_cifar10_dir), 64,
                                                                  0)
  workdir = [a.split('=', 1)[1] for a in trained if a.startswith('--workdir=')][0]
  with pytest.raises(Interrupted, match='after 3 of 91 evaluations; nothing written'):
    robustness.evaluate_robustness(config, workdir, output_dir=str(tmp_path / 'out'), stop=stop,
                                   progress=False)
  assert not list((tmp_path / 'out').iterdir())
