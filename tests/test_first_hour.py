"""What a new user meets first, the way they meet it: help, mistaken flags, a pipe that closes
(`| head`, `| tee` ended by Ctrl-C), the progress bar and the estimate on a terminal, the log
kept in the workdir, a run that cannot start leaving nothing behind."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import fake_data
from tests.harness import REPO, flags

ENV = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}
PY = sys.executable


def cli(*args, **kwargs):
  return subprocess.run([PY, str(REPO / 'main.py'), *args], capture_output=True, text=True,
                        env=ENV, cwd=REPO, timeout=300, **kwargs)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_shows_this_programs_usage_and_flags_first_and_exits_0(flag):
  result = cli(flag)
  assert result.returncode == 0 and result.stderr == '', result.stderr
  assert result.stdout.startswith('flax-seresnet: train, evaluate, predict or export')
  usage, flag_list = result.stdout.split('\nFlags:\n')
  assert 'Exit codes: 0 done;' in ' '.join(usage.split()) and '75 stopped by SIGINT' in usage
  for name in ('--mode', '--workdir', '--config', '--output', 'list_config', 'dry_run'):
    assert name in flag_list
  assert 'absl' not in flag_list  # only this program's own flags


@pytest.mark.parametrize('args,line', [
    (['--mode=evaluate'],
     'error: --mode=evaluate: value should be one of <train|eval|predict|export|robustness>'),
    (['--top_k=-1'], 'error: --top_k=-1: -1 is not a non-negative integer'),
    (['--config.model.widht=3'], 'error: --config.model.widht is not a setting (did you mean '
     '--config.model.widths?): `python main.py --list_config` lists every setting'),
    (['--mdoe=eval'], "error: Unknown command line flag 'mdoe'. Did you mean: mode ?: `python "
     "main.py --help` lists the flags"),
])
def test_a_mistaken_flag_is_named_in_one_line_with_its_allowed_values(args, line):
  result = cli('--config', 'configs/smoke.py', *args)
  assert (result.returncode, result.stdout, result.stderr) == (2, '', line + '\n')


def test_list_config_into_a_pipe_that_closes_early_is_no_error():
  result = subprocess.run(
      ['bash', '-c', f'set -o pipefail; {PY} main.py --list_config | head -2'], cwd=REPO,
      env=ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stderr == '', result.stderr
  assert result.stdout.splitlines()[0].startswith("name = 'seresnet'")
  assert len(result.stdout.splitlines()) == 2


def test_dry_run_checks_the_data_folder_by_its_file_names(tmp_path):
  result = cli('--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'run'), '--dry_run',
               f'--config.data_dir={tmp_path / "missing"}')
  assert result.returncode == 2 and result.stdout == '', result.stderr
  assert result.stderr.startswith(f'error: CIFAR-10 folder {tmp_path / "missing"} does not exist')
  assert not (tmp_path / 'run').exists()
  folder = fake_data.write_fake_cifar10(tmp_path / 'data', per_batch=4, test_count=4)
  result = cli('--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'run'), '--dry_run',
               f'--config.data_dir={folder}')
  assert result.returncode == 0 and result.stdout == (
      f'would train with config smoke on {folder} in {tmp_path / "run"}: flags, config and data '
      'folder are valid\n'), result.stderr


def test_a_run_without_its_data_leaves_only_its_log(tmp_path):
  workdir = tmp_path / 'run'
  result = cli('--config', 'configs/smoke.py', f'--workdir={workdir}',
               f'--config.data_dir={tmp_path}')  # a folder without the batches
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  last = result.stderr.splitlines()[-1]
  assert last.startswith(f'error: CIFAR-10 batch {tmp_path / "data_batch_1"} does not exist')
  assert os.listdir(workdir) == ['run.log']  # no .lock, no empty checkpoints/
  assert (workdir / 'run.log').read_text().splitlines()[-1] == last


def test_the_workdir_keeps_the_log_of_each_command_and_the_data_folder_used(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  args = [a for a in flags(data_dir, workdir) if not a.startswith('--config.data_dir=')]
  env = {**ENV, 'CIFAR10_DATA_DIR': str(data_dir)}
  for epochs in (1, 2):  # a run, then its resume: both logs, one after the other
    result = subprocess.run([PY, str(REPO / 'main.py'), *args, f'--config.num_epochs={epochs}'],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
  log = (workdir / 'run.log').read_text()
  assert log.count('\n--- ') + log.startswith('--- ') == 2
  assert log.count('compiled in ') == 2 and 'resumed ' in log
  assert json.loads((workdir / 'config.json').read_text())['data_dir'] == str(data_dir.resolve())


def test_ctrl_c_through_a_tee_keeps_the_exit_code_and_the_last_line(data_dir, tmp_path):
  """A terminal's Ctrl-C reaches the whole foreground group: tee dies with it, and the run's
  stdout and stderr become broken pipes. The run still stops cleanly with exit 75, and its
  last line reaches run.log."""
  workdir, log, rc = tmp_path / 'run', tmp_path / 'tee.log', tmp_path / 'rc'
  release = tmp_path / 'release'
  args = ' '.join(f"'{a}'" for a in flags(data_dir, workdir))
  script = (f"{PY} tests/cli_probe.py step {args} 2>&1 | tee {log} > /dev/null; "
            f"echo ${{PIPESTATUS[0]}} > {rc}")
  shell = subprocess.Popen(['bash', '-c', script], cwd=REPO, start_new_session=True,
                           env={**ENV, 'PROBE_HOLD': f'5:{release}'})
  try:
    wait_until(lambda: 'PROBE step 5 pid=' in read(log))
    os.killpg(shell.pid, signal.SIGINT)  # as a terminal does: every process of the job
    wait_until(lambda: 'SIGINT received: stopping' in read(workdir / 'run.log'))
    release.write_text('')
    shell.wait(300)
  finally:
    if shell.poll() is None:
      os.killpg(shell.pid, signal.SIGKILL)
  assert rc.read_text() == '75\n'
  last = read(workdir / 'run.log').splitlines()[-1]
  assert last.startswith('interrupted: SIGINT received: stopped at epoch 1 step 5 of 80'), last
  assert 'Traceback' not in read(workdir / 'run.log') + read(log)


def read(path):
  try:
    return path.read_text()
  except FileNotFoundError:
    return ''


def wait_until(condition, timeout=300):
  """Polls a condition the test waits for (not a time that it hopes is enough)."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, 'timed out'
    time.sleep(0.05)


def test_on_a_terminal_the_estimate_agrees_with_the_bars_own_rate(data_dir, tmp_path):
  """On a terminal (a pty of 120 columns) the bar shows; with steps as slow as the published
  network's on a CPU (a second or more), the early estimate must agree with tqdm's measured rate
  (the bar's loss once waited for the steps in flight: an estimate 8x too high)."""
  args = ' '.join(f"'{a}'" for a in flags(data_dir, tmp_path / 'run')
                  if not a.startswith(('--config.progress_bar', '--config.batch_size')))
  command = (f'stty cols 120 rows 40; PROBE_STEP_S=1.5 {PY} tests/cli_probe.py none {args} '
             '--config.num_epochs=1 --config.batch_size=16')  # 20 steps
  result = subprocess.run(['script', '-qec', command, '/dev/null'], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:]
  estimate = float(re.search(r'about ([\d.e+-]+) s a step', result.stdout).group(1))
  rates = [float(r) if unit == 's/it' else 1 / float(r) for r, unit in
           re.findall(r'([\d.]+)(s/it|it/s)', result.stdout)]
  assert rates, result.stdout[-3000:]
  assert 1.5 <= estimate < 2.5 and 0.6 < estimate / rates[-1] < 1.6, (estimate, rates)


def test_a_folder_named_like_a_shipped_config_does_not_shadow_it(tmp_path):
  (tmp_path / 'smoke').mkdir()
  result = subprocess.run([PY, str(REPO / 'main.py'), '--config', 'smoke', '--list_config'],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
  assert result.returncode == 0 and "name = 'smoke'" in result.stdout, result.stderr


def test_uint8_images_into_the_model_are_refused_at_once():
  import jax
  import numpy as np
  from flax_seresnet import SEResNet
  model = SEResNet(stage_blocks=(1, 1, 1), widths=(8, 8, 8))
  images = np.zeros((1, 32, 32, 3), np.uint8)
  with pytest.raises(TypeError, match='input_pipeline.normalize'):
    jax.eval_shape(lambda: model.init(jax.random.key(0), images))
  jax.eval_shape(lambda: model.init(jax.random.key(0), images.astype(np.float32)))


def test_a_workdir_start_removes_what_a_killed_writer_left_and_checks_tensorboard(
    data_dir, tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / '.metrics.jsonl.abc123.tmp').write_text('half')
  (workdir / '.notes.txt.tmp').write_text('not ours')
  (workdir / 'tensorboard').write_text('a file')
  args = [a for a in flags(data_dir, workdir)] + ['--config.num_epochs=1']
  result = subprocess.run([PY, str(REPO / 'main.py'), *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
      f'error: {workdir / "tensorboard"} (the TensorBoard events) is a file, not a folder: move '
      'it away, or use another --workdir.'), result.stderr[-2000:]
  assert 'compiling' not in result.stderr  # refused before any compilation
  assert not (workdir / '.metrics.jsonl.abc123.tmp').exists()
  assert (workdir / '.notes.txt.tmp').exists()
