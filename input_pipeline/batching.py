"""Host-side planning of which examples form each batch (numpy only; inputs already validated).

Batches are arrays of example indices into the dataset held on the devices: the jitted step
gathers `images[indices]` and keys each example's augmentation by its index. Every process
computes the same plan from (seed, epoch) and feeds its own slice (`process_slice`).
"""
import numpy as np


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The shuffled order of `n` examples in `epoch`: a function of (seed, epoch) only, so a
  resumed run repeats an uninterrupted one without replaying earlier epochs."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def _kept_remainder(n: int, batch_size: int, drop_last: bool, multiple_of: int) -> int:
  """Examples in the last partial batch: dropped, or trimmed to split evenly over devices."""
  rest = 0 if drop_last else n % batch_size
  return rest - rest % multiple_of


def train_batches(permutation: np.ndarray, batch_size: int, *, drop_last: bool = False,
                  multiple_of: int = 1) -> list[np.ndarray]:
  """An epoch's order cut into global batches. The last partial batch is kept (as torch's
  DataLoader does) unless `drop_last`, trimmed to a multiple of the device count; it has its own
  shape, so the step compiles once more for it."""
  full = len(permutation) // batch_size
  batches = [permutation[i * batch_size:(i + 1) * batch_size] for i in range(full)]
  rest = _kept_remainder(len(permutation), batch_size, drop_last, multiple_of)
  if rest:
    batches.append(permutation[full * batch_size:full * batch_size + rest])
  return batches


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False, multiple_of: int = 1) -> int:
  """How many batches `train_batches` makes of `n` examples."""
  return n // batch_size + bool(_kept_remainder(n, batch_size, drop_last, multiple_of))


def eval_batches(n: int, batch_size: int, *, multiple_of: int = 1):
  """(indices, mask) batches covering every example once, all of one shape (one compilation):
  the size is rounded up to a multiple of the device count; padding is index 0, mask False."""
  size = -(-batch_size // multiple_of) * multiple_of
  for start in range(0, n, size):
    indices = np.arange(start, start + size, dtype=np.int32)
    mask = indices < n
    yield np.where(mask, indices, 0).astype(np.int32), mask


def process_slice(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """Rows [i * B / P, (i + 1) * B / P) of a global batch: what process i feeds (a batch sharded
  along its first axis over devices ordered by process)."""
  per_process = len(global_batch) // process_count
  return global_batch[process_index * per_process:(process_index + 1) * per_process]
