"""Which examples form each batch: planned once on the host, the same in every process.

Batches are arrays of example indices into the dataset held on the devices: the jitted step
gathers `images[indices]` and keys each example's augmentation by its index. Every process
computes the same plan from (seed, epoch) and feeds its own rows of each global batch.
"""
import dataclasses
from typing import Iterator, Optional

import numpy as np

from input_pipeline.errors import DataError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The shuffled order of `n` examples in `epoch`: a function of (seed, epoch) only, so a
  resumed run repeats an uninterrupted one without replaying earlier epochs."""
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """The one owner of the batch rules of a run (or, with num_train None, of an evaluation).

  Training: global batches of `batch_size` from each epoch's permutation; the last partial batch
  is kept (as torch's DataLoader does) unless `drop_last`, trimmed to a multiple of the device
  count so that it splits over the devices (it has its own shape: one more compilation).
  Evaluation: batches of one shape, a multiple of the device count and no larger than the test
  set needs; the padding repeats index 0 and is masked out.
  """
  num_test: int
  eval_batch_size: int
  num_train: Optional[int] = None
  batch_size: int = 1
  seed: int = 0
  drop_last: bool = False
  num_devices: int = 1
  num_processes: int = 1
  process_index: int = 0

  def __post_init__(self):
    if self.num_test < 1:
      raise DataError('the set to evaluate or predict holds no images: use a non-empty file')
    if self.num_train is None:
      return
    if self.num_train < 1:
      raise DataError('the training set holds no images: check config.data_dir and '
                      'config.train_subset')
    if self.batch_size % self.num_devices:
      raise DataError(f'config.batch_size={self.batch_size} does not split over the '
                      f'{self.num_devices} devices: use a multiple of {self.num_devices}')
    if self.steps_per_epoch < 1:
      raise DataError(f'config.batch_size={self.batch_size} leaves no training step for '
                      f'{self.num_train} images (drop_last={self.drop_last}, '
                      f'{self.num_devices} devices): use a smaller batch size')

  @property
  def last_batch(self) -> int:
    """Examples in the last partial batch (0: none)."""
    rest = 0 if self.drop_last else self.num_train % self.batch_size
    return rest - rest % self.num_devices

  @property
  def steps_per_epoch(self) -> int:
    return self.num_train // self.batch_size + bool(self.last_batch)

  @property
  def batch_sizes(self) -> list[int]:
    """The global batch sizes of an epoch, largest first (one compiled step each)."""
    full = [self.batch_size] if self.num_train >= self.batch_size else []
    return full + ([self.last_batch] if self.last_batch else [])

  def images_in_steps(self, start: int, stop: int) -> int:
    """How many examples the steps start..stop-1 of an epoch train on."""
    short = self.batch_size - self.last_batch if self.last_batch and stop == self.steps_per_epoch else 0
    return (stop - start) * self.batch_size - short

  def train_batches(self, epoch: int) -> list[np.ndarray]:
    """Epoch `epoch`'s global batches, in order."""
    order = epoch_permutation(self.seed, epoch, self.num_train)
    full = self.num_train // self.batch_size
    batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(full)]
    if self.last_batch:
      batches.append(order[full * self.batch_size:full * self.batch_size + self.last_batch])
    return batches

  @property
  def eval_size(self) -> int:
    size = min(self.eval_batch_size, self.num_test)
    return -(-size // self.num_devices) * self.num_devices

  def eval_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, mask) batches covering each of the num_test examples once, in order."""
    for start in range(0, self.num_test, self.eval_size):
      indices = np.arange(start, start + self.eval_size, dtype=np.int32)
      mask = indices < self.num_test
      yield np.where(mask, indices, 0).astype(np.int32), mask

  def local(self, global_rows: np.ndarray) -> np.ndarray:
    """This process's rows [i * B / P, (i + 1) * B / P) of a global batch (a batch sharded along
    its first axis over devices ordered by process)."""
    per_process = len(global_rows) // self.num_processes
    return global_rows[self.process_index * per_process:(self.process_index + 1) * per_process]
