"""The README as a newcomer reads it: every Python snippet runs as written, every command's
flags and settings are valid (main.py --dry_run, the benchmark scripts' --help), and nothing
links outside the repository."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.harness import REPO  # noqa: E402
README = (REPO / 'README.md').read_text()
ENV = {**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'}


def blocks(language):
  return re.findall(rf'```{language}\n(.*?)```', README, re.S)


def commands():
  """Each command line of the bash blocks, continuations joined, comments dropped."""
  for block in blocks('bash'):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.split(' #')[0].strip()
      if line and not line.startswith('#'):
        yield line


def test_no_link_leaves_the_repository():
  for target in re.findall(r'\]\(([^)]+)\)', README):
    assert not target.startswith(('../', '/')) and 'shared/' not in target, target
    if not target.startswith(('#', 'http')):
      assert (REPO / target).exists(), target
  assert '../shared' not in README


def test_every_python_snippet_runs_as_written(tmp_path):
  torch = pytest.importorskip('torch')
  from flax_seresnet.reference import TorchSEResNet
  torch.manual_seed(0)  # the file the snippet is "given": the original's checkpoint layout
  torch.save({'net': {f'module.{k}': v for k, v in TorchSEResNet().state_dict().items()},
              'acc': 95.0, 'epoch': 199}, tmp_path / 'ckpt.pth')
  from flax_seresnet import export  # the folder the export snippet is "given"
  from tests.train_helpers import tiny_config
  export.export(tiny_config(), str(tmp_path / 'exported'), torch_checkpoint=str(tmp_path / 'ckpt.pth'))
  snippets = blocks('python')
  assert len(snippets) >= 2
  runner = ('import sys\nfor i, code in enumerate(sys.argv[1:]):\n'
            '  exec(compile(code, f"README python block {i + 1}", "exec"), {})\n')
  result = subprocess.run([sys.executable, '-c', runner, *snippets], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '(8, 10) 4697742' in result.stdout  # what the snippets say they print
  assert '(4, 10) (4, 10)' in result.stdout


def given_files(words, folder):
  """The inputs a command names, made (empty) in `folder`, as the reader is assumed to have."""
  for flag in ('--input', '--torch_checkpoint'):
    if flag in words:
      path = folder / words[words.index(flag) + 1]
      if str(words[words.index(flag) + 1]).endswith('/'):
        path.mkdir(parents=True, exist_ok=True)
      else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_every_command_is_valid(tmp_path):
  runs = []
  for line in commands():
    words = shlex.split(line.replace('&', ''))
    if 'main.py' in words or 'flax-seresnet' in words:
      start = words.index('main.py') + 1 if 'main.py' in words else words.index('flax-seresnet') + 1
      given_files(words, tmp_path)
      runs.append((line, [sys.executable, str(REPO / 'main.py'), *words[start:], '--dry_run']))
    elif words[:2] == ['bash', 'run.sh']:
      assert words[2] in ('train', 'test'), line
    elif words[0] == 'bash':
      assert (REPO / words[1]).exists(), line
    elif words[0] == 'python':
      help_text = subprocess.run([sys.executable, str(REPO / words[1]), '--help'], env=ENV,
                                 capture_output=True, text=True, timeout=300, cwd=REPO).stdout
      for flag in [w.split('=')[0] for w in words[2:] if w.startswith('--')]:
        assert flag in help_text, (line, flag)
    else:
      assert words[0] in ('source', 'srun', 'wait', 'exit', '[', 'scontrol'), line
  assert len(runs) >= 8
  (tmp_path / 'configs').symlink_to(REPO / 'configs')  # the commands run in a clone's folder
  processes = [(line, subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)) for line, args in runs]
  for line, process in processes:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0 and out.startswith(('would ', 'name = ', 'flax-seresnet: ')), (
        line, err)
