"""Small, well-formed CIFAR-10 folders for the tests, so that every test runs anywhere."""
import os
import pathlib
import pickle

import numpy as np

from input_pipeline.cifar10 import META_FILE, TEST_FILE, TRAIN_FILES

CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
               'truck')


def make_batch(count: int, seed: int, name: str = 'batch', learnable: bool = False) -> dict:
  """A batch dict in the official layout, labels cycling 0..9. Random pixels, or, when
  `learnable`, one colour per class plus noise (a tiny network learns it in a few steps, so
  training tests can check learning without the real data)."""
  rng = np.random.default_rng(seed)
  labels = [int((i + seed) % 10) for i in range(count)]
  if learnable:
    colours = np.random.default_rng(12345).integers(30, 226, (10, 3)).repeat(1024, axis=1)
    noise = rng.integers(-30, 31, (count, 3072))
    data = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
  else:
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
  return {'batch_label': name, 'labels': labels, 'data': data,
          'filenames': [f'{i:05d}.png' for i in range(count)]}


def write_pickle(path: str | os.PathLike[str], obj: object, protocol: int = 2) -> None:
  """Pickles `obj` to `path` (protocol 2 by default, like the official files)."""
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=protocol)


def write_fake_cifar10(folder: str | os.PathLike[str], *, per_batch: int = 20,
                       test_count: int = 20, seed: int = 0,
                       learnable: bool = False) -> pathlib.Path:
  """Writes data_batch_1..5, test_batch and batches.meta (batch i uses seed + i)."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(TRAIN_FILES):
    write_pickle(folder / name, make_batch(per_batch, seed + i, name, learnable))
  write_pickle(folder / TEST_FILE,
               make_batch(test_count, seed + len(TRAIN_FILES), TEST_FILE, learnable))
  write_pickle(folder / META_FILE, {'num_cases_per_batch': per_batch,
                                    'label_names': list(CLASS_NAMES), 'num_vis': 3072})
  return folder
