"""The validation split (config.validation_size): balanced, chosen by the seed alone, never
trained on, the one set that picks the best checkpoint; the summary names the set of each
figure."""
import json

import numpy as np
import pytest

import input_pipeline
from flax_seresnet import checkpointing, config as config_lib, records, train
from flax_seresnet.errors import CheckpointError, ConfigError
from input_pipeline.dataset import split_training, validation_rows
from tests.train_helpers import tiny_config

LABELS = np.random.default_rng(7).permutation(np.arange(500) % 10)  # 50 of each class


def test_the_split_is_balanced_and_a_function_of_the_seed():
  rows = validation_rows(LABELS, 100, seed=0)
  assert np.bincount(LABELS[rows], minlength=10).tolist() == [10] * 10
  assert len(set(rows.tolist())) == 100 and (np.diff(rows) > 0).all()
  np.testing.assert_array_equal(rows, validation_rows(LABELS.copy(), 100, seed=0))
  assert set(rows.tolist()) != set(validation_rows(LABELS, 100, seed=1).tolist())


def test_train_subset_applies_to_what_the_split_leaves():
  train_rows, held = split_training(LABELS, 100, seed=3, subset=40)
  rest = np.setdiff1d(np.arange(500), held)
  np.testing.assert_array_equal(train_rows, rest[:40])  # the first 40 of those not held out
  assert not set(train_rows.tolist()) & set(held.tolist())
  with pytest.raises(input_pipeline.DataError, match='train_subset=450 .* only 400 images after '
                     'the validation set'):
    split_training(LABELS, 100, seed=3, subset=450)


@pytest.mark.parametrize('size, message', [
    (15, r'^config.validation_size=15 must be a multiple of 10 .*use e.g. 10.$'),
    (50000, r'^config.validation_size=50000 leaves no training images of a class'),
    (-10, r'^config.validation_size=-10 must be >= 0.$')])
def test_a_bad_size_is_refused_in_one_line(size, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(tiny_config(validation_size=size))


def test_a_class_left_without_training_images_is_refused():
  with pytest.raises(input_pipeline.DataError, match=r'validation_size=500 holds out 50 images '
                     'of class 0, which has 50 training images: none would be left'):
    validation_rows(LABELS, 500, seed=0)


def test_held_out_images_are_never_trained_on_and_stay_held_out(learnable_cifar10_dir, tmp_path):
  config = tiny_config(learnable_cifar10_dir, validation_size=60, max_epochs_this_run=1)
  with train.Trainer(config, str(tmp_path)) as trainer:
    splits, plan = trainer.splits, trainer.plan
    trainer.run()
  full = input_pipeline.load_dataset(tiny_config(learnable_cifar10_dir))
  held = splits.validation_rows
  assert np.bincount(full.train_labels[held], minlength=10).tolist() == [6] * 10
  np.testing.assert_array_equal(splits.validation_images, full.train_images[held])
  np.testing.assert_array_equal(splits.data.train_images, full.train_images[splits.train_rows])
  assert plan.num_train == 320 - 60
  for epoch in range(3):  # the rows the batch plan feeds, as rows of the training set read
    used = splits.train_rows[np.concatenate(plan.train_batches(epoch))]
    assert not set(used.tolist()) & set(held.tolist())
  config.max_epochs_this_run = 0
  with train.Trainer(config, str(tmp_path)) as resumed:  # a resume holds out the same images
    assert resumed.position.epoch == 1
    np.testing.assert_array_equal(resumed.splits.validation_rows, held)
  with pytest.raises(CheckpointError, match='validation_size: saved 60, now 0'):
    train.Trainer(tiny_config(learnable_cifar10_dir), str(tmp_path))


# (validation accuracy, test accuracy) of epochs 1-3: they disagree on the best epoch.
SCRIPTED = {'val': [30.0, 70.0, 50.0], 'test': [40.0, 20.0, 90.0]}


@pytest.fixture
def scripted(monkeypatch):
  """Trainer.evaluate returns SCRIPTED's accuracies (loss 1.0) for the epoch being recorded."""
  def evaluate(self, which='test'):
    return {'loss': 1.0, 'accuracy': SCRIPTED[which][len(self.position.history)]}
  monkeypatch.setattr(train.Trainer, 'evaluate', evaluate)


def test_checkpoints_rank_by_validation_when_a_save_has_both(tmp_path):
  with checkpointing.Checkpoints(str(tmp_path), keep=1) as checkpoints:
    for step, (val, test) in enumerate(zip(*SCRIPTED.values()), 1):
      checkpoints.save(step, {'model': {'w': np.zeros(2, np.float32)}},
                       {'epoch': step, 'config': {}, 'history': []},
                       {'val_accuracy': val, 'test_accuracy': test})
    assert checkpoints.steps() == [2, 3]  # the newest, and the best on validation
    assert checkpoints.restore({}, 'best')[1]['epoch'] == 2


def best_epoch(workdir) -> int:
  with checkpointing.Checkpoints(str(workdir), read_only=True) as checkpoints:
    return checkpoints.restore({}, 'best')[1]['epoch']


def test_the_best_checkpoint_is_chosen_on_validation(learnable_cifar10_dir, tmp_path, scripted):
  config = tiny_config(learnable_cifar10_dir, validation_size=60, keep_checkpoints=1)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert best_epoch(tmp_path) == 2  # validation's best; the test set's is epoch 3
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [10, 15]
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [(r['val_accuracy'], r['test_accuracy']) for r in map(json.loads, lines)] == list(
      zip(*SCRIPTED.values()))
  assert summary['best_on'] == 'val' and summary['best_val_accuracy'] == 70.0
  assert summary['final_test_accuracy'] == 90.0 and 'best_test_accuracy' not in summary
  line = records.summary_line(summary)
  assert line.startswith('summary: config=tiny final_test_accuracy=90.00 best_val_accuracy=70.00 '
                         'best_on=val epochs=3 '), line
  assert 'best_test' not in line


def test_without_a_split_the_test_set_picks_and_says_so(learnable_cifar10_dir, tmp_path,
                                                        scripted):
  summary = train.train_and_evaluate(tiny_config(learnable_cifar10_dir), str(tmp_path))
  assert best_epoch(tmp_path) == 3
  assert 'val_accuracy' not in (tmp_path / 'metrics.jsonl').read_text()
  assert records.summary_line(summary).startswith(
      'summary: config=tiny final_test_accuracy=90.00 best_test_accuracy=90.00 best_on=test '
      'epochs=3 ')


@pytest.mark.parametrize('validation_size, test_subset, compiled', [(120, 120, 1), (60, 0, 2)])
def test_one_eval_step_serves_both_sets_of_one_shape(learnable_cifar10_dir, tmp_path,
                                                     validation_size, test_subset, compiled):
  config = tiny_config(learnable_cifar10_dir, validation_size=validation_size,
                       test_subset=test_subset, eval_batch_size=128)
  with train.Trainer(config, str(tmp_path)) as trainer:
    trainer.compile()
    assert sum(isinstance(k, tuple) for k in trainer._compiled) == compiled
    assert 0 <= trainer.evaluate('val')['accuracy'] <= 100
