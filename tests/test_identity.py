"""What a result says it was computed by: the code's commit and the config's hash."""
import re
import subprocess

from flax_seresnet import config as config_lib, identity


def test_the_hash_changes_with_what_is_computed_only():
  base = identity.config_hash(config_lib.defaults())
  assert re.fullmatch(r'[0-9a-f]{12}', base)
  assert identity.config_hash(config_lib.defaults()) == base
  resumable = [k for k, s in config_lib.SETTINGS.items() if s.resumable]
  assert {'name', 'data_dir', 'num_epochs', 'eval_batch_size', 'progress_bar'} <= set(resumable)
  for key, value in [('name', 'other'), ('num_epochs', 3), ('eval_batch_size', 10),
                     ('data_dir', '/elsewhere'), ('test_subset', 100)]:
    config = config_lib.defaults()
    config.update_from_flattened_dict({key: value})
    assert identity.config_hash(config) == base, key
  for key, value in [('seed', 1), ('learning_rate', 0.2), ('validation_size', 5000),
                     ('model.widths', (64, 128, 512)), ('onecycle.pct_start', 0.25)]:
    config = config_lib.defaults()
    config.update_from_flattened_dict({key: value})
    assert identity.config_hash(config) != base, key


def test_the_hash_reads_tuples_and_lists_alike_and_missing_keys_as_defaults():
  config = config_lib.defaults()
  config.model.widths = [64, 128, 256]
  saved = config_lib.defaults().to_dict()
  del saved['validation_size']  # a config saved before the setting existed
  assert identity.config_hash(config) == identity.config_hash(config_lib.defaults()) == \
      identity.config_hash(saved)


def git(folder, *args):
  subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=folder,
                 check=True, capture_output=True)


def test_the_commit_of_a_checkout_clean_dirty_or_none(tmp_path):
  assert identity.commit_of(str(tmp_path)) == 'v0.2.0'  # not a checkout: the version
  git(tmp_path, 'init', '-q')
  (tmp_path / 'a.py').write_text('x = 1\n')
  git(tmp_path, 'add', 'a.py')
  git(tmp_path, 'commit', '-qm', 'a')
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=tmp_path, capture_output=True,
                        text=True, check=True).stdout.strip()
  assert identity.commit_of(str(tmp_path)) == head
  (tmp_path / 'notes.txt').write_text('untracked files do not change the code\n')
  assert identity.commit_of(str(tmp_path)) == head
  (tmp_path / 'a.py').write_text('x = 2\n')
  assert identity.commit_of(str(tmp_path)) == f'{head}-dirty'


def test_without_git_the_version(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))  # no git to run
  assert identity.commit_of(identity.PACKAGE_DIR) == 'v0.2.0'


def test_this_package_has_a_commit():
  assert re.fullmatch(r'[0-9a-f]{40}(-dirty)?|v0\.2\.0', identity.code_commit())
