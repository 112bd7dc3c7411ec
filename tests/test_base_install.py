"""The environment `bash run.sh train` builds: the base install alone (no extras: no torch, no
onnx, no test tools) trains, evaluates, predicts on images and exports model.jax. A scenario
test (a fresh virtual environment: minutes): `bash run.sh test -m scenario`."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import fake_data
from tests.train_helpers import REPO

pytestmark = pytest.mark.scenario


@pytest.fixture(scope='module')
def base_python(tmp_path_factory):
  venv = tmp_path_factory.mktemp('base') / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  python = venv / 'bin' / 'python'
  install = subprocess.run(
      [str(python), '-m', 'pip', 'install', '-q', '-c', str(REPO / 'requirements-lock.txt'),
       str(REPO)], capture_output=True, text=True, timeout=1800)
  assert install.returncode == 0, install.stderr[-3000:]
  return python


def test_the_base_install_has_no_extras(base_python):
  result = subprocess.run([str(base_python), '-c', 'import torch'], capture_output=True,
                          timeout=120)
  assert result.returncode != 0  # a real base environment, not the test one


def test_the_base_install_trains_evaluates_predicts_and_exports(base_python, tmp_path):
  from PIL import Image
  data = fake_data.write_fake_cifar10(tmp_path / 'data', per_batch=16, test_count=16,
                                      learnable=True)
  (tmp_path / 'photos').mkdir()
  for i in range(2):
    Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(tmp_path / 'photos' / f'{i}.png')
  common = ['--config', 'smoke', f'--workdir={tmp_path / "run"}', f'--config.data_dir={data}',
            '--config.model.widths=(8,16,16)', '--config.train_subset=0', '--config.batch_size=16',
            '--config.eval_batch_size=16', '--config.num_epochs=1', '--config.num_devices=1']
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'XLA_FLAGS')}
  command = base_python.parent / 'flax-seresnet'  # the installed command, outside the clone
  for extra, first in [([], 'summary: config=smoke '), (['--mode=eval'], 'test_accuracy='),
                       (['--mode=predict', f'--input={tmp_path / "photos"}',
                         f'--output={tmp_path / "p.csv"}'], f'{tmp_path / "photos" / "0.png"}: '),
                       (['--mode=export', f'--output={tmp_path / "exported"}'],
                        'exported model.jax and model.json')]:
    result = subprocess.run([str(command), *common, *extra], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert result.stdout.startswith(first), result.stdout
  assert sorted(os.listdir(tmp_path / 'exported')) == ['model.jax', 'model.json']
