"""Small, well-formed CIFAR-10 folders for tests (of this package and others)."""
import os
import pathlib
import pickle

import numpy as np

from input_pipeline.cifar10 import META_FILE, TEST_FILE, TRAIN_FILES

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
               'truck')


def make_batch(count: int, seed: int, name: str = 'batch') -> dict:
  """A batch dict in the official layout: random pixels, labels cycling 0..9."""
  rng = np.random.default_rng(seed)
  return {
      'batch_label': name,
      'labels': [int((i + seed) % 10) for i in range(count)],
      'data': rng.integers(0, 256, (count, 3072), dtype=np.uint8),
      'filenames': [f'{i:05d}.png' for i in range(count)],
  }


def write_pickle(path: str | os.PathLike[str], obj: object, protocol: int = 2) -> None:
  """Pickles `obj` to `path` (protocol 2 by default, like the official files)."""
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=protocol)


def write_fake_cifar10(folder: str | os.PathLike[str], *, per_batch: int = 20,
                       test_count: int = 20, seed: int = 0) -> pathlib.Path:
  """Writes data_batch_1..5, test_batch and batches.meta with random images.

  Args:
    folder: created if needed.
    per_batch: images in each training batch (5 * per_batch in all).
    test_count: images in test_batch.
    seed: batch i uses seed + i, so every batch differs.

  Returns:
    `folder` as a Path.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(TRAIN_FILES):
    write_pickle(folder / name, make_batch(per_batch, seed + i, name))
  write_pickle(folder / TEST_FILE, make_batch(test_count, seed + len(TRAIN_FILES), TEST_FILE))
  write_pickle(folder / META_FILE, {'num_cases_per_batch': per_batch,
                                    'label_names': list(CLASS_NAMES), 'num_vis': 3072})
  return folder
