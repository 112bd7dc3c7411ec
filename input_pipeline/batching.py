"""Host-side planning of which examples go into which batch (numpy only).

Batches are lists of example indices into the dataset arrays; the caller
gathers `images[indices]` and passes the same indices to
`augment.example_keys`, so each example's augmentation is fixed by its index.

Global batches span all devices and processes. Every process computes the
same plan from the same (seed, epoch) and feeds its own slice of each batch
(`process_slice`); each process's slice is further split evenly over its local
devices, which is why batch sizes are kept multiples of the device count.
"""
import math
import numbers

import numpy as np

from flax_seresnet.errors import DataError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The shuffled order of `n` examples for `epoch`, as int32.

  It depends on (seed, epoch) only, so resuming at any epoch reproduces the
  order of an uninterrupted run without replaying the earlier epochs.
  """
  seed, epoch, n = (_check_int(v, name, 0) for v, name in
                    ((seed, 'seed (config.seed)'), (epoch, 'epoch'), (n, 'n')))
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def train_batches(permutation: np.ndarray,
                  batch_size: int,
                  *,
                  drop_last: bool = False,
                  multiple_of: int = 1) -> list[np.ndarray]:
  """Cuts an epoch's order into global training batches of example indices.

  All batches but the last have `batch_size` examples. The remainder (fewer
  than `batch_size` examples) is dropped when `drop_last`; otherwise it is
  kept, as torch's DataLoader does by default, but trimmed to a multiple of
  `multiple_of` (the device count, so it splits evenly over devices): its
  first `len - len % multiple_of` indices are kept, and the batch is dropped
  if that leaves none. The few trimmed examples are seen in other epochs,
  since each epoch has a different order.

  A kept partial batch has a different shape from the others, so a jitted
  train step compiles a second time for it (once per run).

  Args:
    permutation: int (N,) the epoch's order, e.g. from `epoch_permutation`.
    batch_size: the global batch size; must be a multiple of `multiple_of`.
    drop_last: drop the last partial batch instead of keeping it.
    multiple_of: every batch size must be a multiple of this (device count).

  Returns:
    The batches in order, each an int32 array of indices.
  """
  multiple_of = _check_int(multiple_of, 'multiple_of (the device count)', 1)
  batch_size = _check_batch_size(batch_size, multiple_of)
  order = np.asarray(permutation).astype(np.int32, copy=False).reshape(-1)
  full = len(order) // batch_size
  batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]
  rest = _kept_remainder(len(order), batch_size, drop_last, multiple_of)
  if rest:
    start = full * batch_size
    batches.append(order[start:start + rest])
  return batches


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False, multiple_of: int = 1) -> int:
  """The number of batches `train_batches` makes from `n` examples."""
  n = _check_int(n, 'n', 0)
  multiple_of = _check_int(multiple_of, 'multiple_of (the device count)', 1)
  batch_size = _check_batch_size(batch_size, multiple_of)
  return n // batch_size + (1 if _kept_remainder(n, batch_size, drop_last, multiple_of) else 0)


def eval_batches(n: int,
                 batch_size: int,
                 *,
                 multiple_of: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
  """Evaluation batches that cover every example exactly once, all one shape.

  The batch size is `batch_size` rounded up to a multiple of `multiple_of`,
  so one compiled eval step serves every batch. The last batch is padded with
  index 0 and its padding is marked False in the mask; weight every metric by
  the mask.

  Args:
    n: the number of examples.
    batch_size: the wanted batch size.
    multiple_of: round the batch size up to a multiple of this (device count).

  Returns:
    A list of (indices int32 (B,), mask bool (B,)), in dataset order.
  """
  n = _check_int(n, 'n', 0)
  multiple_of = _check_int(multiple_of, 'multiple_of (the device count)', 1)
  batch_size = _check_int(batch_size, 'eval batch size (config.eval_batch_size)', 1)
  size = math.ceil(batch_size / multiple_of) * multiple_of
  batches = []
  for start in range(0, n, size):
    count = min(size, n - start)
    indices = np.zeros(size, np.int32)
    indices[:count] = np.arange(start, start + count, dtype=np.int32)
    mask = np.zeros(size, bool)
    mask[:count] = True
    batches.append((indices, mask))
  return batches


def process_slice(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """The contiguous part of a global batch that process `process_index` feeds.

  Process i gets rows [i * B / P, (i + 1) * B / P): disjoint, and together
  the whole batch, in order. This matches a batch sharded along its first
  axis over a mesh whose devices are ordered by process.
  """
  process_count = _check_int(process_count, 'process_count', 1)
  process_index = _check_int(process_index, 'process_index', 0)
  if process_index >= process_count:
    raise DataError(f'process_index {process_index} is not below process_count {process_count}: '
                    'check the distributed settings')
  size = len(global_batch)
  if size % process_count:
    raise DataError(f'a global batch of {size} examples does not split over {process_count} '
                    'processes: make the batch size (config.batch_size) a multiple of the device '
                    'count')
  per_process = size // process_count
  return global_batch[process_index * per_process:(process_index + 1) * per_process]


def _kept_remainder(n: int, batch_size: int, drop_last: bool, multiple_of: int) -> int:
  """How many of the last `n % batch_size` examples form a kept last batch."""
  if drop_last:
    return 0
  rest = n % batch_size
  return rest - rest % multiple_of


def _check_batch_size(batch_size: int, multiple_of: int) -> int:
  batch_size = _check_int(batch_size, 'batch size (config.batch_size)', 1)
  if batch_size % multiple_of:
    raise DataError(f'batch size (config.batch_size) {batch_size} is not a multiple of the device '
                    f'count {multiple_of}: choose a multiple of {multiple_of}')
  return batch_size


def _check_int(value: int, name: str, minimum: int) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise DataError(f'{name} is {value!r}; use an int >= {minimum}')
  return int(value)
