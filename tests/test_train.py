"""The training system end to end on the CPU: learning, records, exact resume (also after
SIGKILL), divergence, evaluation and prediction. Multi-device forms: tests/test_parallel.py."""
import csv
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from flax_seresnet import checkpointing, train
from tests.train_helpers import REAL_CIFAR10, REPO, flat_params, tiny_config

pytestmark = pytest.mark.skipif(not (REAL_CIFAR10 / 'data_batch_1').exists(),
                                reason=f'real CIFAR-10 not at {REAL_CIFAR10}')


def final_variables(workdir, which='latest'):
  config = tiny_config()
  _, variables = train.load_for_inference(config, str(workdir), which)
  return flat_params(variables)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """A tiny run of 3 epochs without interruption."""
  workdir = tmp_path_factory.mktemp('straight')
  summary = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, summary


def test_smoke_config_learns(tmp_path, capsys):
  from configs import smoke
  config = smoke.get_config()
  config.data_dir = str(REAL_CIFAR10)
  config.progress_bar = False
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['final_test_accuracy'] >= 30.0, summary  # chance is 10%
  out = capsys.readouterr().out
  last = out.strip().splitlines()[-1]
  assert last.startswith('summary: config=smoke final_test_accuracy=')
  for field in ('best_test_accuracy=', 'epochs=4 ', 'train_s=', 'compile_s=', 'img_per_s=',
                'device=cpu'):
    assert field in last
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [l['epoch'] for l in lines] == [1, 2, 3, 4]
  assert lines[-1]['test_accuracy'] == pytest.approx(summary['final_test_accuracy'])
  assert lines[-1]['train_loss'] < lines[0]['train_loss']
  assert (tmp_path / 'curves.png').stat().st_size > 1000
  assert any(f.name.startswith('events.out.tfevents') for f in (tmp_path / 'tensorboard').iterdir())
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [2, 4]
  # eval mode on the same workdir reproduces the final accuracy.
  assert train.evaluate(config, str(tmp_path)) == pytest.approx(summary['final_test_accuracy'],
                                                                abs=1e-6)


def test_resume_is_bitwise_exact(straight_run, tmp_path):
  workdir, summary = straight_run
  config = tiny_config(max_epochs_this_run=1)
  first = train.train_and_evaluate(config, str(tmp_path))
  assert not first['finished'] and first['epochs'] == 1
  second = train.train_and_evaluate(tiny_config(max_epochs_this_run=1), str(tmp_path))
  assert second['epochs'] == 2
  last = train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert last['finished']
  chex.assert_trees_all_equal(final_variables(tmp_path), final_variables(workdir))
  assert last['final_test_accuracy'] == summary['final_test_accuracy']
  history = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [h['epoch'] for h in history] == [1, 2, 3]


def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  overrides = ['num_epochs=12', 'train_subset=1024']
  straight = tmp_path / 'straight'
  env = dict(os.environ, PYTHONPATH=str(REPO))
  worker = [sys.executable, str(REPO / 'tests' / 'train_helpers.py')]
  subprocess.run(worker + [str(tmp_path / 'a.npz'), str(straight)] + overrides, check=True,
                 env=env, capture_output=True)
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(worker + [str(tmp_path / 'b.npz'), str(killed)] + overrides, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not (killed / 'checkpoints' / '3').exists():
    assert proc.poll() is None and time.time() < deadline, 'worker ended before checkpoint 3'
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir() if p.name.isdigit())
  assert done and max(done) < 12, f'the run was not killed mid-training: {done}'
  subprocess.run(worker + [str(tmp_path / 'b.npz'), str(killed)] + overrides, check=True,
                 env=env, capture_output=True)
  a, b = np.load(tmp_path / 'a.npz'), np.load(tmp_path / 'b.npz')
  assert sorted(a.files) == sorted(b.files)
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_incompatible_config_is_refused(straight_run):
  workdir, _ = straight_run
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='learning_rate'):
    train.Trainer(tiny_config(learning_rate=0.2), str(workdir))
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='widths'):
    train.Trainer(tiny_config(**{'model.widths': (8, 16, 32)}), str(workdir))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  original = train.Trainer.train_epoch

  def poisoned(self, state, epoch):
    state, metrics, seconds, images = original(self, state, epoch)
    if epoch == 1:
      metrics = dict(metrics, loss=float('nan'))
    return state, metrics, seconds, images

  monkeypatch.setattr(train.Trainer, 'train_epoch', poisoned)
  with pytest.raises(train.TrainingDiverged, match='epoch 2.*checkpoint \\(epoch 1\\)'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']


def test_really_diverging_run_is_stopped(tmp_path):
  config = tiny_config(learning_rate=1e12, grad_clip='none', schedule='constant', num_epochs=2)
  with pytest.raises(train.TrainingDiverged, match='nan|inf'):
    train.train_and_evaluate(config, str(tmp_path))


def test_best_checkpoint_and_eval_choices(straight_run):
  workdir, summary = straight_run
  config = tiny_config()
  best = checkpointing.Checkpointer(str(workdir)).restore_meta('best')
  assert best['best_test_accuracy'] == pytest.approx(summary['best_test_accuracy'])
  assert train.evaluate(config, str(workdir), 'best') == pytest.approx(
      summary['best_test_accuracy'], abs=1e-6)


def test_predict_writes_one_row_per_id(straight_run, tmp_path):
  workdir, _ = straight_run
  config = tiny_config()
  data = __import__('input_pipeline').load_dataset(config)
  images = data.test_images[:37]
  hidden = tmp_path / 'hidden.pkl'
  with open(hidden, 'wb') as f:
    pickle.dump({b'data': images.transpose(0, 3, 1, 2).reshape(37, -1),
                 b'ids': np.arange(1000, 1037)}, f)
  out = tmp_path / 'pred.csv'
  assert train.predict(config, str(hidden), str(out), str(workdir)) == 37
  rows = list(csv.reader(out.open()))
  assert rows[0] == ['ID', 'Labels']
  assert [int(r[0]) for r in rows[1:]] == list(range(1000, 1037))
  labels = np.array([int(r[1]) for r in rows[1:]])
  assert labels.min() >= 0 and labels.max() <= 9
  # The same predictions as the evaluation path.
  model, variables = train.load_for_inference(config, str(workdir))
  expected = train._predict_batches(model, variables, images, 16, False)
  np.testing.assert_array_equal(labels, expected)


def test_eval_of_a_pytorch_checkpoint(tmp_path):
  torch = pytest.importorskip('torch')
  from flax_seresnet.reference import TorchSEResNet
  import input_pipeline
  torch.manual_seed(0)
  net = TorchSEResNet(stage_blocks=(1, 1, 1), widths=(8, 16, 16)).eval()
  path = tmp_path / 'ckpt.pth'
  torch.save({'net': {f'module.{k}': v for k, v in net.state_dict().items()}, 'acc': 0.0,
              'epoch': 0}, path)
  config = tiny_config()
  accuracy = train.evaluate(config, torch_checkpoint=str(path))
  data = input_pipeline.load_dataset(config)
  x = np.array(input_pipeline.normalize(data.test_images)).transpose(0, 3, 1, 2).copy()
  with torch.no_grad():
    expected = (net(torch.from_numpy(x)).argmax(1).numpy() == data.test_labels).mean() * 100
  assert accuracy == pytest.approx(expected, abs=0.21)  # at most one borderline image


def run_cli(*args, env_extra=None, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
  return subprocess.run([sys.executable, str(REPO / 'main.py'), *args], capture_output=True,
                        text=True, env=env, timeout=timeout, cwd=REPO)


def test_cli_eval_prints_the_accuracy_line(straight_run):
  workdir, summary = straight_run
  result = run_cli('--config', 'configs/smoke.py', '--workdir', str(workdir), '--mode', 'eval',
                   f'--config.data_dir={REAL_CIFAR10}', '--config.test_subset=500')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == (
      f"test_accuracy={summary['final_test_accuracy']:.2f}")


@pytest.mark.parametrize('override,needle', [
    ('--config.learning_rate=-0.1', 'learning_rate'),
    ('--config.schedule=linear', 'schedule'),
    ('--config.grad_clip=norm', 'grad_clip'),
    ('--config.parallel=pmapjit', 'parallel'),
    ('--config.batch_size=102', 'batch_size'),
    ('--config.data_dir=/nonexistent/cifar', 'data_dir'),
    ('--config.model.kernel_sizes=(4,3,3)', 'kernel sizes'),
    ('--config.num_devices=9', 'num_devices'),
    ('--config.distributed.initialize=maybe', 'initialize'),
])
def test_cli_bad_config_fails_fast_with_one_line(tmp_path, override, needle):
  start = time.time()
  result = run_cli('--config', 'configs/smoke.py', '--workdir', str(tmp_path / 'w'), override,
                   env_extra={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert result.returncode == 2
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith('error: ') and needle in lines[-1], result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert time.time() - start < 60  # no compilation happened


def test_cli_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  result = run_cli('--config', 'configs/smoke.py', '--workdir', str(blocker / 'run'),
                   f'--config.data_dir={REAL_CIFAR10}')
  assert result.returncode == 2
  assert 'workdir' in result.stderr.strip().splitlines()[-1]


def test_ema_parameters_are_kept_and_evaluated(tmp_path):
  from flax_seresnet import steps
  config = tiny_config(ema_decay=0.5, num_epochs=1)
  trainer = train.Trainer(config, str(tmp_path))
  trainer.run()
  host = trainer.dp.to_host(trainer.final_state)
  assert host.ema_params is not None
  differences = [float(np.max(np.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(host.ema_params), jax.tree.leaves(host.params))]
  assert max(differences) > 0  # the average lags behind the parameters
  assert steps.eval_variables(host)['params'] is host.ema_params
  # The EMA is part of the checkpoint: evaluating the saved run uses it.
  _, variables = train.load_for_inference(config, str(tmp_path))
  chex.assert_trees_all_equal(variables['params'], host.ema_params)
