"""Seeded random damage to a batch file (official layout, protocol 2) and to a hidden-set pickle
(protocol 4): every variant must end in a clean one-line DataError or a valid load, never in a
crash (run in a subprocess: its exit code is checked) or a hang (its timeout)."""
import json
import subprocess
import sys

import numpy as np

from tests.conftest import REPO
from tests.fake_data import make_batch, write_fake_cifar10, write_pickle

_RUNNER = r'''
import json, shutil, sys, time
from flax_seresnet.errors import DataError
from input_pipeline.cifar10 import load_cifar10, load_unlabeled
folder, cases = sys.argv[1], json.load(open(sys.argv[2]))
results = []
for kind, path in cases:
  print(path, file=sys.stderr, flush=True)  # names the variant if the process crashes
  start = time.perf_counter()
  try:
    if kind == 'batch':
      shutil.copy(path, folder + '/data_batch_1')
      load_cifar10(folder)
    else:
      load_unlabeled(path)
    outcome = 'ok'
  except DataError as e:  # one line that names the file
    named = folder + '/data_batch_1' if kind == 'batch' else path
    outcome = 'DataError' if '\n' not in str(e) and named in str(e) else repr(e)
  except Exception as e:  # pylint: disable=broad-except
    outcome = f'{type(e).__name__}: {e}'
  results.append((outcome, time.perf_counter() - start))
print(json.dumps(results))
'''


def _mutate(content: bytes, rng: np.random.Generator) -> bytes:
  """One random flip, insertion, deletion, duplication or truncation, mostly in the pickle's
  structure (its first 300 and last 400 bytes) rather than inside the pixel string."""
  size = len(content)
  structure = np.r_[0:min(300, size), max(0, size - 400):size]
  at = int(rng.choice(structure) if rng.random() < 0.8 else rng.integers(size))
  kind = rng.integers(5)
  if kind == 0:
    noise = rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
    return content[:at] + noise + content[at + len(noise):]
  if kind == 1:
    return content[:at] + rng.integers(0, 256, 4, dtype=np.uint8).tobytes() + content[at:]
  if kind == 2:
    return content[:at] + content[at + int(rng.integers(1, 9)):]
  if kind == 3:
    return content[:at] + content[at:at + 16] + content[at:]
  return content[:at]


def test_damaged_files_fail_cleanly(tmp_path):
  folder = write_fake_cifar10(tmp_path / 'cifar', per_batch=1, test_count=1)
  bases = {'batch': tmp_path / 'batch.pkl', 'hidden': tmp_path / 'hidden.pkl'}
  write_pickle(bases['batch'], make_batch(2, 0, 'data_batch_1'), protocol=2)
  write_pickle(bases['hidden'], {'data': make_batch(2, 1)['data'], 'ids': np.arange(2)},
               protocol=4)
  rng = np.random.default_rng(20240611)
  cases = []
  for kind, base in bases.items():
    content = base.read_bytes()
    for i in range(300):
      path = tmp_path / f'{kind}_{i}.pkl'
      path.write_bytes(_mutate(content, rng))
      cases.append((kind, str(path)))
  (tmp_path / 'cases.json').write_text(json.dumps(cases))
  done = subprocess.run([sys.executable, '-c', _RUNNER, str(folder), str(tmp_path / 'cases.json')],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, f'exit {done.returncode} at {done.stderr.splitlines()[-1:]}'
  results = json.loads(done.stdout.splitlines()[-1])
  failures = [(case, outcome) for case, (outcome, _) in zip(cases, results)
              if outcome not in ('ok', 'DataError')]
  assert not failures, failures[:5]
  assert max(seconds for _, seconds in results) < 2.0
  outcomes = [outcome for outcome, _ in results]
  # Control band: the damage reaches the structure (refusals) without breaking every file.
  assert 0.2 < outcomes.count('DataError') / len(outcomes) < 0.98
