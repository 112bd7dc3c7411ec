"""The batch plan: permutations, train and eval batches, per-process rows, and every batch rule."""
import numpy as np
import pytest

from input_pipeline import BatchPlan, DataError, epoch_permutation


def plan(n, batch_size, drop_last=False, devices=1, processes=1, index=0, num_test=10,
         eval_batch_size=10, seed=0):
  return BatchPlan(num_test=num_test, eval_batch_size=eval_batch_size, num_train=n,
                   batch_size=batch_size, seed=seed, drop_last=drop_last, num_devices=devices,
                   num_processes=processes, process_index=index)


def test_permutation_is_a_reproducible_function_of_seed_and_epoch():
  p = epoch_permutation(0, 3, 1000)
  assert p.dtype == np.int32
  np.testing.assert_array_equal(np.sort(p), np.arange(1000))
  # Reproducible without replaying epochs 0..2, and in a fresh call order.
  epoch_permutation(0, 7, 1000)
  np.testing.assert_array_equal(epoch_permutation(0, 3, 1000), p)
  assert not np.array_equal(epoch_permutation(0, 4, 1000), p)
  assert not np.array_equal(epoch_permutation(1, 3, 1000), p)
  # (seed, epoch) is not confused with (epoch, seed).
  assert not np.array_equal(epoch_permutation(3, 0, 1000), epoch_permutation(0, 3, 1000))
  assert len(epoch_permutation(0, 0, 0)) == 0


@pytest.mark.parametrize('n, batch_size, drop_last, devices, sizes', [
    (10, 4, False, 1, [4, 4, 2]),
    (10, 4, True, 1, [4, 4]),
    (12, 4, False, 1, [4, 4, 4]),
    (12, 4, True, 1, [4, 4, 4]),
    (11, 4, False, 2, [4, 4, 2]),   # remainder 3 trimmed to 2
    (9, 4, False, 2, [4, 4]),       # remainder 1 trimmed to 0: dropped
    (50000, 128, False, 8, [128] * 390 + [80]),
    (50000, 128, False, 1, [128] * 390 + [80]),
    (50000, 512, False, 8, [512] * 97 + [336]),
    (3, 8, False, 1, [3]),
])
def test_train_batches(n, batch_size, drop_last, devices, sizes):
  p = plan(n, batch_size, drop_last, devices)
  batches = p.train_batches(0)
  assert [len(b) for b in batches] == sizes
  assert p.steps_per_epoch == len(sizes)
  assert p.batch_sizes == sorted(set(sizes), reverse=True)
  assert p.images_in_steps(0, len(sizes)) == sum(sizes)
  if len(sizes) > 2:
    assert p.images_in_steps(1, len(sizes) - 1) == sum(sizes[1:-1])
  assert all(b.dtype == np.int32 for b in batches)
  # In order, disjoint, taken from the front of the permutation.
  joined = np.concatenate(batches)
  np.testing.assert_array_equal(joined, epoch_permutation(0, 0, n)[:sum(sizes)])
  assert len(np.unique(joined)) == len(joined)


def test_train_batches_cover_everything_without_drop():
  batches = plan(1001, 100, seed=5).train_batches(1)
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(1001))


@pytest.mark.parametrize('kwargs, message', [
    (dict(n=0, batch_size=8), 'the training set holds no images'),
    (dict(n=3, batch_size=8, drop_last=True), 'leaves no training step for 3 images '
     r'\(drop_last=True'),
    (dict(n=1, batch_size=2, devices=2), r'leaves no training step for 1 images \(drop_last=False'),
    (dict(n=100, batch_size=12, devices=8), 'does not split over the 8 devices: use a multiple'),
    (dict(n=100, batch_size=8, num_test=0), 'holds no images'),
])
def test_every_batch_rule_is_one_error_naming_the_setting(kwargs, message):
  with pytest.raises(DataError, match=message) as raised:
    plan(**kwargs)
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('n, batch_size, devices, size', [
    (10000, 1000, 1, 1000), (10000, 1000, 3, 1002), (10, 4, 1, 4), (10, 3, 4, 4), (1, 5, 2, 2),
    (200, 1000000, 8, 200),  # never padded beyond what the set needs
    (201, 1000000, 8, 208),
])
def test_eval_batches(n, batch_size, devices, size):
  p = BatchPlan(num_test=n, eval_batch_size=batch_size, num_devices=devices)
  batches = list(p.eval_batches())
  assert p.eval_size == size and len(batches) == -(-n // size)
  for indices, mask in batches:
    assert indices.shape == mask.shape == (size,)
    assert indices.dtype == np.int32 and mask.dtype == bool
    assert (indices[~mask] == 0).all()
    assert mask[:mask.sum()].all()  # the padding is only at the end
  valid = np.concatenate([indices[mask] for indices, mask in batches])
  np.testing.assert_array_equal(valid, np.arange(n))  # each exactly once, in order


def test_local_rows():
  batch = np.arange(24)
  parts = [plan(100, 8, processes=4, index=i).local(batch) for i in range(4)]
  assert all(len(p) == 6 for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), batch)  # disjoint, contiguous, in order
  np.testing.assert_array_equal(plan(100, 8).local(batch), batch)


def test_every_process_plans_the_same_epoch():
  """Processes computing the plan separately feed disjoint rows covering each batch."""
  plans = [plan(1000, 64, devices=8, processes=2, index=i, seed=9) for i in range(2)]
  for batch_a, batch_b in zip(plans[0].train_batches(2), plans[1].train_batches(2)):
    np.testing.assert_array_equal(batch_a, batch_b)
    mine, theirs = plans[0].local(batch_a), plans[1].local(batch_b)
    assert not set(mine) & set(theirs)
    np.testing.assert_array_equal(np.concatenate([mine, theirs]), batch_a)
