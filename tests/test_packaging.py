"""What the install promises: every library import is declared, the lock is the tested set and
fits the declared ranges, configs and the console command work outside the repository, and
run.sh picks the JAX CUDA build the driver can run."""
import ast
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from tests.harness import REPO  # noqa: E402
PROJECT = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
# Import names of the library's third-party modules -> their distributions. Optional ones are
# imported only where a feature needs them, and named in an extra.
DISTRIBUTIONS = {'jax': 'jax', 'flax': 'flax', 'optax': 'optax', 'orbax': 'orbax-checkpoint',
                 'ml_collections': 'ml_collections', 'absl': 'absl-py', 'numpy': 'numpy',
                 'tqdm': 'tqdm', 'matplotlib': 'matplotlib', 'tensorboardX': 'tensorboardX',
                 'PIL': 'pillow', 'scipy': 'scipy'}
OPTIONAL = {'torch': 'torch', 'tensorflow_datasets': 'tfds', 'onnx': 'onnx',
            'onnxruntime': 'onnx'}


def names(requirements):
  return {Requirement(r).name.lower().replace('_', '-') for r in requirements}


def library_imports():
  found = set()
  for path in [*REPO.glob('flax_seresnet/*.py'), *REPO.glob('input_pipeline/*.py'),
               REPO / 'main.py']:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        found |= {alias.name.split('.')[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        found.add(node.module.split('.')[0])
  return found - set(sys.stdlib_module_names) - {'flax_seresnet', 'input_pipeline', 'configs'}


def test_every_import_of_the_library_is_declared_and_chex_is_for_tests_only():
  runtime = names(PROJECT['dependencies'])
  for module in library_imports():
    if module in OPTIONAL:
      extra = PROJECT['optional-dependencies'].get(OPTIONAL[module], [])
      assert names(extra) & {module.lower(), 'torch', 'tensorflow-datasets', 'pillow',
                             'onnxruntime', 'onnx'}, module
    else:
      assert DISTRIBUTIONS[module].lower().replace('_', '-') in runtime, module
  assert 'chex' not in runtime and 'chex' in names(PROJECT['optional-dependencies']['test'])
  for requirement in PROJECT['dependencies']:
    assert any(s.operator in ('<', '<=', '==') for s in Requirement(requirement).specifier), \
        f'{requirement} has no upper bound'


def test_the_library_version_is_the_package_version():
  import flax_seresnet
  assert flax_seresnet.__version__ == PROJECT['version']


def lock():
  lines = (REPO / 'requirements-lock.txt').read_text().splitlines()
  return dict(line.split('==') for line in lines if line and not line.startswith('#'))


def test_the_lock_fits_the_declared_ranges_and_is_what_the_tests_run_with():
  locked = {k.lower().replace('_', '-'): v for k, v in lock().items()}
  for requirement in PROJECT['dependencies']:
    req = Requirement(requirement)
    version = locked[req.name.lower().replace('_', '-')]
    assert req.specifier.contains(version), (requirement, version)
    # run.sh installs with the lock as constraints: this environment is the locked one.
    assert importlib.metadata.version(req.name) == version, req.name


def test_configs_and_the_console_command_work_outside_the_repository(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  script = pathlib.Path(sys.executable).parent / 'flax-seresnet'
  if not script.exists():
    pytest.skip('the console script is installed by pip install (run.sh)')
  result = subprocess.run([str(script), '--config', 'fast', '--list_config'], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'batch_size = 512  #' in result.stdout
  result = subprocess.run([sys.executable, '-c', 'from configs import fast; '
                           'print(fast.get_config().name)'], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=120)
  assert result.stdout == 'fast\n', result.stderr


@pytest.mark.parametrize('cuda,extras,warned', [
    ('12.4', 'cuda12', False), ('13.0', 'cuda13', False), ('11.8', 'none', True),
    (None, 'none', False)])
def test_run_sh_installs_the_cuda_build_the_driver_can_run(tmp_path, cuda, extras, warned):
  if cuda:  # a stand-in nvidia-smi that prints what the real one does
    (tmp_path / 'nvidia-smi').write_text(
        '#!/bin/sh\n[ "$1" = "-L" ] && { echo "GPU 0: NVIDIA H200"; exit 0; }\n'
        f'echo "| NVIDIA-SMI 580.82   Driver Version: 580.82   CUDA Version: {cuda}     |"\n')
    (tmp_path / 'nvidia-smi').chmod(0o755)
  path = f'{tmp_path}{os.pathsep}' + os.pathsep.join(
      p for p in os.environ['PATH'].split(os.pathsep)
      if not (pathlib.Path(p) / 'nvidia-smi').exists())
  result = subprocess.run(['bash', str(REPO / 'run.sh'), 'extras'], capture_output=True,
                          text=True, env=dict(os.environ, PATH=path), timeout=60)
  assert result.returncode == 0 and result.stdout == f'{extras}\n'
  assert bool(re.search(r"supports CUDA '11'.*CPU build", result.stderr)) == warned
