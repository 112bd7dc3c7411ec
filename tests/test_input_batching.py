"""Host-side batch planning: permutations, train/eval batches, per-process slices."""
import numpy as np
import pytest

from input_pipeline import (epoch_permutation, eval_batches, process_slice, steps_per_epoch,
                            train_batches)


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


@pytest.mark.parametrize('n, batch_size, drop_last, multiple_of, sizes', [
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
    (3, 8, True, 1, []),
    (0, 8, False, 1, []),
])
def test_train_batches(n, batch_size, drop_last, multiple_of, sizes):
  perm = epoch_permutation(0, 0, n)
  batches = train_batches(perm, batch_size, drop_last=drop_last, multiple_of=multiple_of)
  assert [len(b) for b in batches] == sizes
  assert steps_per_epoch(n, batch_size, drop_last, multiple_of) == len(sizes)
  assert all(b.dtype == np.int32 for b in batches)
  # In order, disjoint, taken from the front of the permutation.
  joined = np.concatenate(batches) if batches else np.zeros(0, np.int32)
  np.testing.assert_array_equal(joined, perm[:sum(sizes)])
  assert len(np.unique(joined)) == len(joined)


def test_train_batches_cover_everything_without_drop():
  perm = epoch_permutation(5, 1, 1001)
  batches = train_batches(perm, 100)
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(1001))


@pytest.mark.parametrize('n, batch_size, multiple_of, size', [
    (10000, 1000, 1, 1000), (10000, 1000, 3, 1002), (10, 4, 1, 4), (10, 3, 4, 4), (1, 5, 2, 6),
])
def test_eval_batches(n, batch_size, multiple_of, size):
  batches = list(eval_batches(n, batch_size, multiple_of=multiple_of))
  assert len(batches) == -(-n // size)
  for indices, mask in batches:
    assert indices.shape == mask.shape == (size,)
    assert indices.dtype == np.int32 and mask.dtype == bool
    assert (indices[~mask] == 0).all()
    # The padding is only at the end.
    assert mask[:mask.sum()].all()
  valid = np.concatenate([indices[mask] for indices, mask in batches])
  np.testing.assert_array_equal(valid, np.arange(n))  # each exactly once, in order


def test_eval_batches_empty():
  assert not list(eval_batches(0, 10))


def test_process_slice():
  batch = np.arange(24)
  parts = [process_slice(batch, i, 4) for i in range(4)]
  assert all(len(p) == 6 for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), batch)  # disjoint, contiguous, in order
  np.testing.assert_array_equal(process_slice(batch, 0, 1), batch)


def test_every_process_plans_the_same_epoch():
  """Processes computing the plan separately feed disjoint slices covering each batch."""
  plans = [train_batches(epoch_permutation(9, 2, 1000), 64, multiple_of=8) for _ in range(2)]
  for batch_a, batch_b in zip(*plans):
    np.testing.assert_array_equal(batch_a, batch_b)
    mine, theirs = process_slice(batch_a, 0, 2), process_slice(batch_b, 1, 2)
    assert not set(mine) & set(theirs)
    np.testing.assert_array_equal(np.concatenate([mine, theirs]), batch_a)
