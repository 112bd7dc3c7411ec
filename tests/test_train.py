"""The training system end to end on the CPU, on generated CIFAR-format data: learning and what a
run says, records, exact resume (also after SIGKILL), divergence, damaged checkpoints, one trainer
per workdir, a full disk, evaluation and prediction. Multi-device forms: tests/test_parallel.py."""
import contextlib
import csv
import errno
import json
import logging
import os
import pathlib
import pickle
import shutil
import signal
import subprocess
import sys

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

import input_pipeline
from flax_seresnet import checkpointing, identity, inference, train
from flax_seresnet.errors import CheckpointError, TrainingDiverged, UserError
from tests.train_helpers import REPO, flat_variables, tiny_config


@contextlib.contextmanager
def captured_logs():
  """The absl log lines written inside the block (a list, filled as they come)."""
  lines = []
  handler = logging.Handler()
  handler.emit = lambda record: lines.append(record.getMessage())
  logger = logging.getLogger('absl')
  old_level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  logger.addHandler(handler)
  try:
    yield lines
  finally:
    logger.removeHandler(handler)
    absl_logging.set_verbosity(old_level)


def config_for(data_dir, **overrides):
  return tiny_config(data_dir, **overrides)


def records(workdir):
  """metrics.jsonl without the timings."""
  return [{k: v for k, v in json.loads(line).items() if not k.endswith(('_s', 'per_s'))}
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def saved_variables(workdir, which='latest'):
  return flat_variables(inference.load_model(tiny_config(), str(workdir), which)[1])


def saved_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir())


@pytest.fixture(scope='module')
def straight(learnable_cifar10_dir, tmp_path_factory):
  """A tiny run of 3 epochs without interruption: (workdir, summary, log lines)."""
  workdir = tmp_path_factory.mktemp('straight')
  with captured_logs() as lines:
    summary = train.train_and_evaluate(config_for(learnable_cifar10_dir), str(workdir))
  return workdir, summary, lines


@pytest.fixture
def copy_of(tmp_path):
  def copy(workdir):
    return pathlib.Path(shutil.copytree(workdir, tmp_path / 'copy'))
  return copy


def test_a_run_learns_keeps_records_and_says_where_it_stands(straight):
  workdir, summary, lines = straight
  assert summary['finished'] and summary['epochs'] == 3
  assert summary['final_test_accuracy'] >= 40.0, summary  # chance is 10%
  history = records(workdir)
  assert [r['epoch'] for r in history] == [1, 2, 3]
  assert history[-1]['test_accuracy'] == summary['final_test_accuracy']
  assert history[-1]['train_loss'] < history[0]['train_loss']
  assert (workdir / 'curves.png').stat().st_size > 1000
  assert any(f.name.startswith('events.out.tfevents') for f in (workdir / 'tensorboard').iterdir())
  assert saved_steps(workdir) == [5, 10, 15]  # named by optimizer steps: 5 per epoch
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['name'] == 'tiny'
  for record in [recorded, summary, *(json.loads(l) for l in
                                      (workdir / 'metrics.jsonl').read_text().splitlines())]:
    assert (record['commit'], record['config_hash']) == (identity.code_commit(),
                                                          identity.config_hash(tiny_config()))
  text = '\n'.join(lines)
  assert 'training on 1 x cpu (jit), global batch 64, 5 steps per epoch, epochs 1-3 of 3.' in text
  assert 'meant for a GPU' not in text  # a run of seconds is not told to find a GPU
  assert 'compiling the train step (1 batch shape) and the eval step ...' in text
  assert 'compiled in ' in text
  assert 'epoch 1 took ' in text and 'for the 2 epochs left in this run.' in text
  line = train.records.summary_line(summary)
  assert line.startswith('summary: config=tiny final_test_accuracy=')
  for field in ('best_test_accuracy=', 'best_on=test ', 'epochs=3 ', 'train_s=', 'compile_s=',
                'img_per_s=', f'commit={summary["commit"]} config_hash={summary["config_hash"]} ',
                'device=cpu'):
    assert field in line
  assert summary['compile_s'] > 0 and summary['img_per_s'] > 0


def test_resume_is_bitwise_exact_and_says_so(straight, learnable_cifar10_dir, tmp_path):
  workdir, summary, _ = straight
  first = train.train_and_evaluate(config_for(learnable_cifar10_dir, max_epochs_this_run=1),
                                   str(tmp_path))
  assert not first['finished'] and first['epochs'] == 1
  line = train.records.summary_line(first)  # no final accuracy yet: says so
  assert line.startswith('summary: config=tiny unfinished=epoch_1_of_3 last_test_accuracy='), line
  assert 'nan' not in line and 'final_' not in line
  with captured_logs() as lines:
    last = train.train_and_evaluate(config_for(learnable_cifar10_dir), str(tmp_path))
  assert any(f'resumed {tmp_path} at epoch 1 of 3' in l and '2 epochs left' in l for l in lines)
  assert last['finished'] and last['final_test_accuracy'] == summary['final_test_accuracy']
  chex.assert_trees_all_equal(saved_variables(tmp_path), saved_variables(workdir))
  assert records(tmp_path) == records(workdir)


def test_rerunning_a_finished_run_reports_its_result(straight, learnable_cifar10_dir, copy_of):
  workdir, summary, _ = straight
  copy = copy_of(workdir)
  with captured_logs() as lines:
    again = train.train_and_evaluate(config_for(learnable_cifar10_dir), str(copy))
  assert again == summary  # its summary again, timings included: nothing was trained
  assert any('already holds epoch 3 of 3: nothing to train' in l for l in lines)
  assert not any('training on' in l or 'compiling' in l for l in lines)
  assert (copy / 'metrics.jsonl').read_text() == (workdir / 'metrics.jsonl').read_text()


def test_a_killed_run_resumes_exactly_and_cleans_up(straight, learnable_cifar10_dir, tmp_path):
  workdir, _, _ = straight
  killed = tmp_path / 'killed'
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, str(REPO / 'tests' / 'train_helpers.py'),
                           str(tmp_path / 'unused.npz'), str(killed),
                           f'data_dir={learnable_cifar10_dir}', 'kill_after_epoch=2'],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert saved_steps(killed) == [5, 10]
  # What a kill in the middle of the next save leaves: a half-written temporary folder.
  shutil.copytree(killed / 'checkpoints' / '10',
                  killed / 'checkpoints' / '15.orbax-checkpoint-tmp-7')
  train.train_and_evaluate(config_for(learnable_cifar10_dir), str(killed))
  assert saved_steps(killed) == [5, 10, 15]
  chex.assert_trees_all_equal(saved_variables(killed), saved_variables(workdir))
  assert records(killed) == records(workdir)


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_record(learnable_cifar10_dir,
                                                                       tmp_path):
  (tmp_path / 'metrics.jsonl').write_text('{"epoch": 1, "train_loss": 2.0}\n')  # left by a kill
  train.train_and_evaluate(config_for(learnable_cifar10_dir, num_epochs=1), str(tmp_path))
  assert [r['epoch'] for r in records(tmp_path)] == [1]


def test_another_config_is_refused_before_data_is_read(straight, learnable_cifar10_dir,
                                                       monkeypatch):
  workdir, _, _ = straight
  events = sorted((workdir / 'tensorboard').iterdir())
  monkeypatch.setattr(input_pipeline, 'load_dataset', lambda config: pytest.fail('data read'))
  with pytest.raises(CheckpointError, match='learning_rate: saved 0.05, now 0.2'):
    train.train_and_evaluate(config_for(learnable_cifar10_dir, learning_rate=0.2), str(workdir))
  with pytest.raises(CheckpointError, match='widths'):
    train.Trainer(config_for(learnable_cifar10_dir, **{'model.widths': (8, 16, 32)}),
                  str(workdir))
  assert sorted((workdir / 'tensorboard').iterdir()) == events


def test_divergence_never_writes_a_non_finite_checkpoint(learnable_cifar10_dir, tmp_path):
  # One step per epoch at a huge rate: the parameters go non-finite while the loss of the step
  # (computed before the update) is still finite.
  config = config_for(learnable_cifar10_dir, learning_rate=1e12, grad_clip='none',
                      schedule='constant', train_subset=64, num_epochs=6, eval_every_epochs=0)
  with pytest.raises(TrainingDiverged) as raised:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(raised.value)
  assert '\n' not in message
  kept = saved_steps(tmp_path)  # one step an epoch here
  assert (f'Epoch {kept[-1]} is the last good checkpoint' in message if kept
          else 'No checkpoint was kept' in message)
  with checkpointing.Checkpoints(str(tmp_path), read_only=True) as checkpoints:
    for _ in kept:  # every checkpoint left restores to finite values
      items, _ = checkpoints.restore({'model': saved_template(tmp_path)})
      assert all(np.isfinite(v).all() for v in flat_variables(items['model']).values())


def saved_template(workdir):
  model = inference.load_model(tiny_config(), str(workdir))[1]
  return {'params': model['params'], 'batch_stats': model['batch_stats']}


def test_a_non_finite_test_loss_stops_the_run(learnable_cifar10_dir, tmp_path, monkeypatch):
  evaluate = train.Trainer.evaluate

  def poisoned(self, which='test'):
    result = evaluate(self, which)
    return dict(result, loss=float('nan')) if len(self.records.history) == 1 else result
  monkeypatch.setattr(train.Trainer, 'evaluate', poisoned)
  with pytest.raises(TrainingDiverged, match='test loss in epoch 2 became NaN or infinite.*'
                     'Epoch 1 is the last good checkpoint'):
    train.train_and_evaluate(config_for(learnable_cifar10_dir), str(tmp_path))


def damage(workdir, step, how):
  folder = workdir / 'checkpoints' / str(step)
  if how == 'flip':  # 64 bytes in the middle of the largest array file
    path = max((p for p in (folder / 'model').rglob('*') if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
  elif how == 'truncate':
    for path in (folder / 'train').rglob('*'):
      if path.is_file():
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
  elif how == 'delete':
    shutil.rmtree(folder / 'model')
  elif how == 'step':  # metadata that claims another step
    meta = folder / 'meta' / 'metadata'
    meta.write_text(meta.read_text().replace('"step": 15', '"step": 25'))
  elif how == 'meta':  # the metadata gone
    shutil.rmtree(folder / 'meta')
  elif how == 'no config':  # metadata without its config
    meta = folder / 'meta' / 'metadata'
    content = json.loads(meta.read_text())
    del content['config']
    meta.write_text(json.dumps(content))


@pytest.mark.parametrize('how', ['flip', 'truncate', 'delete', 'step', 'meta', 'no config'])
def test_a_damaged_newest_checkpoint_falls_back_is_moved_aside_and_the_run_finishes(
    straight, learnable_cifar10_dir, copy_of, how):
  copy = copy_of(straight[0])
  damage(copy, 15, how)
  with captured_logs() as lines:
    summary = train.train_and_evaluate(config_for(learnable_cifar10_dir), str(copy))
  assert any('resumed' in l and 'at epoch 2 of 3' in l for l in lines)
  warnings = [l for l in lines if 'is damaged and skipped' in l]
  assert len(warnings) == 1 and '/15 ' in warnings[0] and '\n' not in warnings[0]
  assert 'moved to' in warnings[0] and len(list((copy / 'damaged_checkpoints').iterdir())) == 1
  assert summary['finished'] and saved_steps(copy) == [5, 10, 15]  # epoch 3 saved again
  assert summary['final_test_accuracy'] == straight[1]['final_test_accuracy']
  chex.assert_trees_all_equal(saved_variables(copy), saved_variables(straight[0]))


def test_no_intact_checkpoint_is_one_line(straight, copy_of):
  copy = copy_of(straight[0])
  for step in (5, 10, 15):
    damage(copy, step, 'delete')
  with pytest.raises(CheckpointError, match=r'^no intact checkpoint in .*steps \[15, 10, 5\]'):
    inference.load_model(tiny_config(), str(copy))
  assert not (copy / 'damaged_checkpoints').exists()  # evaluation moves nothing


def test_one_workdir_one_trainer(learnable_cifar10_dir, tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, os, sys, time; f = open(sys.argv[1], "a+"); '
       'fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); print("locked", '
       'flush=True); time.sleep(120)', str(tmp_path / '.lock')], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(UserError, match=f'in use by another trainer \\(pid {holder.pid}\\)'):
    train.train_and_evaluate(config_for(learnable_cifar10_dir, num_epochs=1), str(tmp_path))
  holder.send_signal(signal.SIGKILL)  # a stale lock of a dead process is taken over
  holder.wait()
  summary = train.train_and_evaluate(config_for(learnable_cifar10_dir, num_epochs=1),
                                     str(tmp_path))
  assert summary['finished']


def test_a_full_disk_is_one_line_and_keeps_the_older_checkpoints(learnable_cifar10_dir, tmp_path,
                                                                 monkeypatch):
  save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 10:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return save(self, step, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(CheckpointError, match=r'step 10 .*\(No space left on device\).*steps \[5\]'):
    train.train_and_evaluate(config_for(learnable_cifar10_dir), str(tmp_path))
  assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == ['5']


def test_evaluation_says_what_it_uses_and_matches_training(straight, learnable_cifar10_dir):
  workdir, summary, _ = straight
  config = config_for(learnable_cifar10_dir, **{'model.widths': (8, 16, 32)})
  with captured_logs() as lines:
    assert inference.evaluate(config, str(workdir))['accuracy'] == summary['final_test_accuracy']
  assert any(f'model: epoch 3 of {workdir} (latest checkpoint' in l and "'widths': [8, 16, 16]"
             in l for l in lines)
  assert any('model settings of --config differ' in l for l in lines)
  best = max(r['test_accuracy'] for r in records(workdir))
  assert (inference.evaluate(config, str(workdir), 'best')['accuracy'] == best
          == summary['best_test_accuracy'])


def test_eval_and_predict_never_create_folders(tmp_path):
  (tmp_path / 'file').write_text('not a workdir')
  for workdir in (tmp_path / 'missing', tmp_path, tmp_path / 'file'):
    with pytest.raises(CheckpointError, match='holds no checkpoints'):
      inference.evaluate(tiny_config(), str(workdir))
  assert [p.name for p in tmp_path.iterdir()] == ['file']


def test_predict_writes_one_row_per_id_as_evaluation_predicts(straight, learnable_cifar10_dir,
                                                              tmp_path):
  workdir, _, _ = straight
  config = config_for(learnable_cifar10_dir)
  data = input_pipeline.load_dataset(config)
  hidden = tmp_path / 'hidden.pkl'
  with open(hidden, 'wb') as f:
    pickle.dump({b'data': data.test_images.transpose(0, 3, 1, 2).reshape(128, -1),
                 b'ids': np.arange(1000, 1128)}, f, protocol=4)
  out = tmp_path / 'pred.csv'
  count, top = inference.predict(config, str(hidden), str(out), str(workdir))
  assert count == 128 and [name for name, _ in top] == list(range(1000, 1005))
  rows = list(csv.reader(out.open()))
  assert rows[0] == ['ID', 'Labels'] and [int(r[0]) for r in rows[1:]] == list(range(1000, 1128))
  labels = np.array([int(r[1]) for r in rows[1:]])
  accuracy = 100 * np.mean(labels == data.test_labels)
  assert accuracy == inference.evaluate(config, str(workdir))['accuracy']
  with pytest.raises(UserError, match='--output'):
    inference.predict(config, str(hidden), str(tmp_path), str(workdir))
  assert not list(tmp_path.glob('*.tmp'))
  with open(hidden, 'wb') as f:  # ids as bytes (a Python 2 pickle's strings) are written as text
    pickle.dump({b'data': np.zeros((2, 3072), np.uint8), b'ids': [b'img-a', b'img-b']}, f)
  inference.predict(config, str(hidden), str(out), str(workdir))
  assert [r[0] for r in csv.reader(out.open())] == ['ID', 'img-a', 'img-b']


def test_ema_parameters_are_kept_and_evaluated(learnable_cifar10_dir, tmp_path):
  config = config_for(learnable_cifar10_dir, ema_decay=0.5, num_epochs=1)
  with train.Trainer(config, str(tmp_path)) as trainer:
    trainer.run()
    host = trainer.dp.to_host(trainer.state)
  differences = [np.max(np.abs(a - b)) for a, b in zip(flat_variables(host.ema_params).values(),
                                                       flat_variables(host.params).values())]
  assert max(differences) > 0  # the average lags behind the parameters
  variables = inference.load_model(config, str(tmp_path))[1]
  chex.assert_trees_all_equal(flat_variables(variables['params']),
                              flat_variables(host.ema_params))


def test_raising_num_epochs_continues_a_finished_run_and_says_what_the_schedule_does(
    straight, learnable_cifar10_dir, copy_of):
  copy = copy_of(straight[0])
  with pytest.raises(CheckpointError, match='already holds epoch 3, beyond config.num_epochs=2'):
    train.train_and_evaluate(config_for(learnable_cifar10_dir, num_epochs=2), str(copy))
  with captured_logs() as lines:
    summary = train.train_and_evaluate(config_for(learnable_cifar10_dir, num_epochs=4), str(copy))
  assert summary['finished'] and summary['epochs'] == 4
  # The cosine per epoch: 0.05 at (1 + cos(pi * 2 / 3)) / 2, then 0.05 at (1 + cos(3 pi / 4)) / 2.
  assert any('config.num_epochs=4 (saved: 3): the schedule is recomputed for 4 epochs; the '
             'learning rate goes from 0.0125 (the last step trained) to 0.007322 (the next).'
             in line for line in lines), lines
  assert [r['epoch'] for r in records(copy)] == [1, 2, 3, 4]


def test_an_early_estimate_of_the_run_and_the_gpu_note_only_for_long_runs(
    learnable_cifar10_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'CPU_NOTE_S', 0.0)  # any run counts as long: the note shows
  with captured_logs() as lines:
    train.train_and_evaluate(config_for(learnable_cifar10_dir, batch_size=8, num_epochs=1),
                             str(tmp_path))
  estimate = [line for line in lines if line.startswith('about ')]
  assert len(estimate) == 1 and ' s a step: ' in estimate[0], lines
  early = [i for i, line in enumerate(lines) if line.startswith('no accelerator found: ')]
  compiled = [i for i, line in enumerate(lines) if line.startswith('compiled in ')]
  assert len(early) == 1 and early[0] < compiled[0], lines  # said before compiling
  assert lines[early[0]].endswith(f'on a CPU, in minutes: {train.CPU_CHECK}'), lines
  assert estimate[0].endswith('of training for this run; no accelerator found: this recipe is '
                              f'meant for a GPU (a CPU check: {train.CPU_CHECK})')
