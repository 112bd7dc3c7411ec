"""The one validation pass over a config: every bad setting is refused with one line naming it,
before any data is read or anything is compiled; every shipped config is valid."""
import ml_collections
import pytest

from configs import fast, seresnet, seresnet_onecycle, smoke
from flax_seresnet import config as config_lib
from flax_seresnet.errors import ConfigError


def config_with(**overrides):
  config = seresnet.get_config()
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize('module', [seresnet, seresnet_onecycle, fast, smoke])
def test_the_shipped_configs_are_valid(module):
  config_lib.validate(module.get_config())


def test_fast_config_scales_the_published_rate_with_the_batch():
  from flax_seresnet import optim
  config = fast.get_config()
  assert optim.peak_learning_rate(config) == 0.1 * 512 / 128
  config.batch_size = 256  # an override rescales the rate: it is derived where it is used
  assert optim.peak_learning_rate(config) == 0.1 * 256 / 128
  assert float(optim.learning_rate_schedule(config, 10)(20)) == pytest.approx(0.2)  # warmed up
  config.learning_rate_batch_size = 0  # the control: no scaling, the rate as given
  assert optim.peak_learning_rate(config) == 0.1


@pytest.mark.parametrize('key,value,message', [
    ('learning_rate', 0.0, 'config.learning_rate=0.0 must be > 0'),
    ('learning_rate', -0.1, 'must be > 0'),
    ('learning_rate', float('inf'), 'must be a finite number'),
    ('learning_rate', float('nan'), 'must be a finite number'),
    ('momentum', 1.0, 'must be in [0.0, 1.0)'),
    ('momentum', -0.1, 'must be in [0.0, 1.0)'),
    ('weight_decay', -1e-4, 'must be >= 0.0'),
    ('schedule', 'linear', "is not one of ('cosine', 'onecycle', 'constant')"),
    ('grad_clip', 'norm', 'is not one of'),
    ('grad_clip_value', -1.0, 'must be >= 0.0'),
    ('num_epochs', 0, 'must be >= 1'),
    ('num_epochs', 2.5, 'must be an integer'),
    ('batch_size', True, 'must be an integer'),
    ('warmup_epochs', -1.0, 'must be >= 0.0'),
    ('onecycle.pct_start', 0.0, 'must be in (0.0, 1.0)'),
    ('onecycle.pct_start', 1.0, 'must be in (0.0, 1.0)'),
    ('onecycle.div_factor', 0.0, 'must be > 0.0'),
    ('onecycle.final_div_factor', -1.0, 'must be > 0.0'),
    ('onecycle.max_momentum', 1.5, 'must be in [0.0, 1.0)'),
    ('model.se_position', 'everywhere', "is not one of ('stem', 'blocks', 'none')"),
    ('model.dtype', 'float16', "is not one of ('float32', 'bfloat16')"),
    ('model.kernel_sizes', (4, 3, 3), 'odd positive integers'),
    ('model.shortcut_kernel_sizes', (1, 2, 1), 'odd positive integers'),
    ('model.widths', (64, 0, 256), 'positive integers'),
    ('model.stage_blocks', (), 'non-empty tuple'),
    ('model.se_reduction', 0, 'must be >= 1'),
    ('model.dropout', 1.0, 'must be in [0.0, 1.0)'),
    ('model.num_classes', 5, 'must be >= 10'),
    ('model.avg_pool_kernel_size', 0, 'must be >= 1'),
    ('pad_mode', 'edge', "is not one of ('zeros', 'reflect')"),
    ('crop_padding', -1, 'must be in [0, 32]'),
    ('dataset', 'imagenet', "is not one of ('cifar10', 'tfds', 'synthetic')"),
    ('train_subset', -5, 'must be >= 0'),
    ('parallel', 'pmapjit', "is not one of ('jit', 'pmap')"),
    ('num_devices', -1, 'must be >= 0'),
    ('distributed.initialize', 'maybe', "is not one of ('auto', 'yes', 'no')"),
    ('distributed.process_id', -2, 'must be >= -1'),
    ('max_epochs_this_run', -1, 'must be >= 0'),
    ('keep_checkpoints', 0, 'must be >= 1'),
    ('eval_every_epochs', -1, 'must be >= 0'),
    ('label_smoothing', 1.0, 'must be in [0.0, 1.0)'),
    ('ema_decay', -0.5, 'must be in [0.0, 1.0)'),
    ('data_dir', 3, 'must be a string'),
    ('download', 'yes', 'must be True or False'),
    ('seed', 2**63, 'must be in [0, 9223372036854775807]'),
    ('distributed.coordinator_address', 'host0', "must be '' (from the environment) or HOST:PORT"),
    ('distributed.coordinator_address', 'host0:port', 'or HOST:PORT'),
    ('distributed.timeout_s', 0, 'must be >= 1'),
])
def test_a_bad_setting_is_named_in_one_line(key, value, message):
  # Without ConfigDict's type checks, as a config built in Python may come.
  config = ml_collections.ConfigDict(seresnet.get_config().to_dict(), type_safe=False)
  config.update_from_flattened_dict({key: value})
  with pytest.raises(ConfigError) as raised:
    config_lib.validate(config)
  text = str(raised.value)
  assert text.startswith(f'config.{key}=') and message in text and '\n' not in text


@pytest.mark.parametrize('overrides,message', [
    ({'model.widths': (64, 128)}, 'config.model.widths has 2 entries for 3 stages'),
    ({'model.avg_pool_kernel_size': 16}, 'larger than the final 8x8 feature map'),
    ({'model.stage_blocks': (1, 1, 1, 1), 'model.widths': (8,) * 4, 'model.kernel_sizes': (3,) * 4,
      'model.shortcut_kernel_sizes': (1,) * 4, 'model.avg_pool_kernel_size': 8}, 'final 4x4'),
    ({'warmup_epochs': 200.0}, 'must be below config.num_epochs=200'),
    ({'cosine_epochs': 100}, 'config.cosine_epochs=100 must be 0 (= num_epochs) or at least'),
    ({'schedule': 'onecycle', 'warmup_epochs': 1.0}, "must be 0 with config.schedule='onecycle'"),
    ({'nesterov': True, 'momentum': 0.0}, 'config.nesterov=True needs config.momentum > 0'),
    ({'grad_clip_value': 0.0}, "must be > 0 with config.grad_clip='value'"),
    ({'num_devices': 2, 'distributed.num_processes': 2}, 'works with one process only'),
    ({'distributed.process_id': 5, 'distributed.num_processes': 2},
     'config.distributed.process_id=5 must be below config.distributed.num_processes=2'),
    ({'model.stage_blocks': (1,) * 7, 'model.widths': (8,) * 7, 'model.kernel_sizes': (3,) * 7,
      'model.shortcut_kernel_sizes': (1,) * 7}, 'has 7 stages: use at most 6'),
])
def test_settings_that_do_not_fit_together(overrides, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config_lib.validate(config_with(**overrides))


def test_good_edge_settings_pass():
  for overrides in ({'grad_clip': 'none', 'grad_clip_value': 0.0},
                    {'momentum': 0.0, 'weight_decay': 0.0}, {'warmup_epochs': 199.5},
                    {'cosine_epochs': 200, 'num_epochs': 40}, {'eval_every_epochs': 0},
                    {'schedule': 'onecycle', 'nesterov': True, 'momentum': 0.0,
                     'onecycle.cycle_momentum': True}):
    config_lib.validate(config_with(**overrides))


def test_unknown_and_missing_keys_are_named():
  config = config_with()
  config.unlock()
  config.model.depth = 3
  with pytest.raises(ConfigError, match=r'^config.model.depth is not a known setting: `python '
                     'main.py --list_config` lists them all'):
    config_lib.validate(config)
  config = config_with()
  config.unlock()
  del config['cosine_epochs']
  with pytest.raises(ConfigError, match=r'^config.cosine_epochs is missing'):
    config_lib.validate(config)


def test_the_schema_is_the_one_place_of_each_setting():
  """Defaults, rules, meaning and resumability come from one table; configs only change keys."""
  assert config_lib.flatten(seresnet.get_config()) == {
      k: s.default for k, s in config_lib.SETTINGS.items()}
  assert all(len(s.doc) > 10 for s in config_lib.SETTINGS.values())
  saved = config_with().to_dict()
  assert config_lib.resume_conflicts(saved, config_with(progress_bar=False, data_dir='x')) == []
  assert config_lib.resume_conflicts(saved, config_with(learning_rate=0.2)) == [
      'learning_rate: saved 0.1, now 0.2']
  del saved['cosine_epochs']  # a run saved before the key existed: its default
  assert config_lib.resume_conflicts(saved, config_with()) == []
