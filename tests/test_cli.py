"""The command line as a user meets it, in real subprocesses: what stdout and stderr hold, whole;
every mistake ends in one line and a documented exit code, also after the checkpoint store
opened; the progress bar on a terminal shows the loss and accuracy."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from flax_seresnet import config as config_lib
from tests import fake_data
from tests.harness import LOG_LINE, REPO, TINY, assert_log_then_one_error, run_cli  # noqa: F401

def test_train_eval_and_predict_print_their_result_alone_on_stdout(learnable_cifar10_dir,
                                                                   tmp_path):
  common = [*TINY, f'--config.data_dir={learnable_cifar10_dir}', '--config.num_epochs=1',
            f'--workdir={tmp_path / "run"}']
  result = run_cli(*common)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.fullmatch(r'summary: config=smoke final_test_accuracy=\d+\.\d\d .* device=cpu\n',
                      result.stdout), result.stdout
  lines = result.stderr.splitlines()
  assert all(LOG_LINE.match(line) for line in lines), result.stderr  # the log, each line timed
  assert 'CIFAR-10 from ' in lines[0] and 'training on 1 x cpu' in lines[1]
  assert not any('orbax' in line.lower() for line in lines)  # the user sees the run's lines only
  accuracy = result.stdout.split('final_test_accuracy=')[1].split()[0]
  result = run_cli(*common, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == f'test_accuracy={accuracy}\n'
  hidden = tmp_path / 'hidden.pkl'
  fake_data.write_pickle(hidden, {'data': fake_data.make_batch(7, 1)['data'], 'ids': list(range(7))})
  result = run_cli(*common, '--mode=predict', f'--input={hidden}', f'--output={tmp_path / "p.csv"}')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()  # the top 3 classes of the first 5, then the count
  assert len(lines) == 6 and all(re.fullmatch(r'\d: (\w+ \d+\.\d%, ){2}\w+ \d+\.\d%', line)
                                 for line in lines[:5]), lines
  assert lines[-1] == f'wrote 7 predictions to {tmp_path / "p.csv"}'
  assert (tmp_path / 'p.csv').read_text().splitlines()[0] == 'ID,Labels'
  other = run_cli(*common, '--config.learning_rate=0.2')  # refused after the store opened
  assert_log_then_one_error(other, 2, 'holds a run with another config (learning_rate: saved')


CONFIG_FILES = {
    'raises.py': ('def get_config():\n  raise RuntimeError("boom")\n', 'RuntimeError: boom'),
    'syntax.py': ('def get_config(:\n', 'SyntaxError'),
    'imports.py': ('import no_such_module\n', "No module named 'no_such_module'"),
    'empty.py': ('x = 1\n', 'has no get_config()'),
    'dict.py': ('def get_config():\n  return {"a": 1}\n', 'returned a dict'),
}


@pytest.mark.parametrize('args,needle', [
    (['--config', 'configs/nope.py'], 'configs/nope.py could not be read'),
    (['--config', 'configs/smoke.py', '--config.learning_rat=0.1'],
     '--config.learning_rat is not a setting (did you mean --config.learning_rate?)'),
    (['--config', 'configs/smoke.py', '--config.batch_size=x'], '--config.batch_size could not'),
    (['--config', 'configs/smoke.py', '--config.model.widths=(8,16'], '--config.model.widths'),
    (['--config', 'configs/smoke.py', '--bogus'], "Unknown command line flag 'bogus'"),
    (['--mode=train'], '--config is required'),
    (['--config', 'configs/smoke.py', 'extra'], "unexpected arguments: ['extra']"),
    *[(['--config', name], needle) for name, (_, needle) in CONFIG_FILES.items()],
])
def test_mistakes_on_the_command_line_are_one_line(tmp_path, args, needle):
  for name, (text, _) in CONFIG_FILES.items():
    (tmp_path / name).write_text(text)
  result = run_cli(*args, timeout=120, cwd=tmp_path if args[-1] in CONFIG_FILES else REPO)
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  assert needle in result.stderr, result.stderr


def test_list_config_names_every_setting_with_its_value_and_meaning():
  result = run_cli('--list_config', timeout=120)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert [line.split(' = ')[0] for line in lines] == list(config_lib.SETTINGS)
  assert all(re.fullmatch(r'\S+ = .+  # \S.{8,}', line) for line in lines)
  assert "dataset = 'cifar10'  # 'cifar10' (the pickled python batches)" in result.stdout
  fast = run_cli('--config', 'configs/fast.py', '--list_config', timeout=120).stdout
  assert 'batch_size = 512  #' in fast and 'batch_size = 128  #' in result.stdout


@pytest.fixture(scope='module')
def forged_dir(learnable_cifar10_dir, tmp_path_factory):
  folder = pathlib.Path(shutil.copytree(learnable_cifar10_dir, tmp_path_factory.mktemp('f') / 'c'))
  (folder / 'data_batch_3').write_bytes(b'\x80\x02cos\nsystem\nq\x00.')
  return folder


@pytest.mark.parametrize('setting,env,needle', [
    ('--config.data_dir=/no/such/dir', {}, 'config.data_dir=/no/such/dir does not exist'),
    ('--config.data_dir={parent}', {}, '{parent}/data_batch_1 does not exist: point'),
    ('', {'CIFAR10_DATA_DIR': '/nope'}, '$CIFAR10_DATA_DIR=/nope does not exist'),
    ('--config.data_dir={forged}', {}, 'is refused: it asks for os.system'),
])
def test_data_mistakes_are_one_line_and_leave_only_the_log(
    learnable_cifar10_dir, forged_dir, tmp_path, setting, env, needle):
  names = {'parent': learnable_cifar10_dir.parent, 'forged': forged_dir}
  result = run_cli(*TINY, f'--workdir={tmp_path}', *[setting.format(**names)] * bool(setting),
                   env=env, timeout=120)
  assert_log_then_one_error(result, 2, needle.format(**names))
  assert os.listdir(tmp_path) == ['run.log']  # the data is read before anything is written


def test_divergence_is_one_line_and_exit_3(learnable_cifar10_dir, tmp_path):
  diverged = run_cli(*TINY, f'--config.data_dir={learnable_cifar10_dir}', f'--workdir={tmp_path}',
                     '--config.learning_rate=1e12', '--config.grad_clip=none',
                     '--config.schedule=constant', '--config.num_epochs=4')
  assert_log_then_one_error(diverged, 3, 'became NaN or infinite')


def test_a_torch_checkpoint_without_torch_names_the_extra(tmp_path):
  (tmp_path / 'torch.py').write_text('raise ImportError("No module named \'torch\'")\n')
  (tmp_path / 'ckpt.pth').write_bytes(b'PK')
  result = run_cli('--config', 'configs/smoke.py', '--mode=eval',
                   f'--torch_checkpoint={tmp_path / "ckpt.pth"}',
                   env={'PYTHONPATH': f'{tmp_path}{os.pathsep}{REPO}'}, timeout=120)
  assert_log_then_one_error(result, 2, "needs PyTorch: pip install 'flax-seresnet[torch]'")


@pytest.mark.skipif(not shutil.which('script'), reason='needs script(1) for a terminal')
def test_the_progress_bar_shows_loss_and_accuracy_on_a_terminal(tmp_path):
  data = fake_data.write_fake_cifar10(tmp_path / 'data', per_batch=256, test_count=64,
                                      learnable=True)
  command = ' '.join([sys.executable, str(REPO / 'main.py'), *TINY, '--config.batch_size=4',
                      f'--config.data_dir={data}', '--config.num_epochs=1',
                      f'--workdir={tmp_path / "run"}']).replace('(', '"(').replace(')', ')"')
  # A new pseudo-terminal has 0 columns and rows, where tqdm prints no bar: set them first.
  result = subprocess.run(['script', '-qec', f'stty cols 120 rows 40; {command}', '/dev/null'],
                          capture_output=True, timeout=300, cwd=REPO,  # bytes: keep each \r
                          env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu'))
  output = result.stdout.decode()
  assert result.returncode == 0, output[-3000:]
  frames = output.replace('\r\n', '\n').split('\r')
  bars = [f for f in frames if f.startswith('epoch 1/1:')]
  assert bars and re.search(r'\d+/320 \[.*, acc=\d+\.\d, loss=\d\.\d{3}\]', ''.join(bars)), bars
  # Log lines are written around the bar, never onto it.
  assert not re.search(r'it/s[^\n]*\]\d{4}-', output)
