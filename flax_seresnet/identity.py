"""What a result was computed by: the code (`code_commit`) and the settings (`config_hash`).

Every record a run or an evaluation writes (the summary line, metrics.jsonl, config.json, the
robustness JSON, the export's card) carries both, so that two results can be told apart or
matched without trusting file names.
"""
import functools
import hashlib
import json
import os
import subprocess

import flax_seresnet
from flax_seresnet import config as config_lib

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _git(folder: str, *args) -> str:
  return subprocess.run(['git', *args], capture_output=True, text=True, timeout=10, cwd=folder,
                        check=True).stdout.strip()


def commit_of(folder: str) -> str:
  """The git commit checked out in `folder`, '-dirty' when tracked files differ from it; else
  'v<installed version>' (an installed package, or no git)."""
  try:
    head = _git(folder, 'rev-parse', 'HEAD')
    dirty = _git(folder, 'status', '--porcelain', '--untracked-files=no')
  except (OSError, subprocess.SubprocessError):
    head = ''
  if len(head) != 40:  # not a checkout (or a git that says something else)
    return f'v{flax_seresnet.__version__}'
  return f'{head}-dirty' if dirty else head


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
  """This package's `commit_of`, asked once per process (a record per epoch asks often)."""
  return commit_of(PACKAGE_DIR)


def config_hash(config) -> str:
  """The first 12 hex digits of SHA-256 over the settings that change what is computed (not the
  resumable ones: names, folders, timings of records), as canonical JSON."""
  values = config_lib.flatten(config)
  kept = {key: values.get(key, setting.default) for key, setting in config_lib.SETTINGS.items()
          if not setting.resumable}
  text = json.dumps(kept, sort_keys=True, separators=(',', ':'))  # tuples and lists alike
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def of(config) -> dict:
  """{'commit': ..., 'config_hash': ...}: what a record adds."""
  return {'commit': code_commit(), 'config_hash': config_hash(config)}
