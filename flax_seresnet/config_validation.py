"""Checks a config before anything is compiled: one line naming the setting, and what to do."""
import os
import tempfile

import jax
import ml_collections

from flax_seresnet import optim
from flax_seresnet.errors import ConfigError
from flax_seresnet.model import DTYPES, SE_POSITIONS, SEResNet
from flax_seresnet.parallel import PARALLEL_MODES

PAD_MODES = ('zeros', 'reflect')


def _positive_int(config, key):
  value = config[key]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f'config.{key}={value!r} must be a positive integer.')


def validate_model_config(model) -> None:
  fields = set(SEResNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(model) - fields)
  if unknown:
    raise ConfigError(f'config.model has unknown keys {unknown}; known: {sorted(fields)}.')
  stages = len(model.stage_blocks)
  for key in ('widths', 'kernel_sizes', 'shortcut_kernel_sizes'):
    if key in model and len(model[key]) != stages:
      raise ConfigError(f'config.model.{key} has {len(model[key])} entries for {stages} stages '
                        '(config.model.stage_blocks): give one per stage.')
  if any(int(b) < 1 for b in model.stage_blocks):
    raise ConfigError(f'config.model.stage_blocks={tuple(model.stage_blocks)} needs >= 1 block '
                      'per stage.')
  if model.get('se_position', 'stem') not in SE_POSITIONS:
    raise ConfigError(f'config.model.se_position={model.se_position!r} is not one of '
                      f'{SE_POSITIONS}.')
  kernels = tuple(model.get('kernel_sizes', ())) + tuple(model.get('shortcut_kernel_sizes', ()))
  if any(int(k) % 2 == 0 for k in kernels):
    raise ConfigError(f'config.model kernel sizes {kernels} must be odd (PyTorch padding k//2 '
                      'keeps the map size).')
  if model.get('dtype', 'float32') not in DTYPES:
    raise ConfigError(f'config.model.dtype={model.dtype!r} is not one of {tuple(DTYPES)}.')
  if not 0.0 <= model.get('dropout', 0.0) < 1.0:
    raise ConfigError(f'config.model.dropout={model.dropout!r} must be in [0, 1).')


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for the first bad setting."""
  try:
    optim.validate_optimizer_config(config)
  except ValueError as e:  # optim's messages already name the setting
    raise ConfigError(str(e)) from None
  validate_model_config(config.model)
  for key in ('batch_size', 'eval_batch_size', 'num_epochs', 'eval_every_epochs',
              'keep_checkpoints'):
    _positive_int(config, key)
  if config.parallel not in PARALLEL_MODES:
    raise ConfigError(f'config.parallel={config.parallel!r} is not one of {PARALLEL_MODES}.')
  requested = config.get('num_devices', 0)
  if requested and (requested < 0 or requested > len(jax.devices()) or jax.process_count() > 1):
    raise ConfigError(f'config.num_devices={requested}: use 0 (all devices) or at most the '
                      f'{len(jax.devices())} devices of this single process.')
  if config.batch_size % num_devices:
    raise ConfigError(f'config.batch_size={config.batch_size} is not divisible by the '
                      f'{num_devices} devices: use a multiple of {num_devices}.')
  if config.pad_mode not in PAD_MODES:
    raise ConfigError(f'config.pad_mode={config.pad_mode!r} is not one of {PAD_MODES}.')
  if config.checkpoint_every_epochs < 0:
    raise ConfigError(f'config.checkpoint_every_epochs={config.checkpoint_every_epochs} must be '
                      '>= 0 (0: only at the end).')
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(f'config.label_smoothing={config.label_smoothing} must be in [0, 1).')
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f'config.ema_decay={config.ema_decay} must be in [0, 1) (0: no EMA).')
  if config.dataset == 'cifar10' and not config.download:
    if not os.path.isdir(config.data_dir):
      raise ConfigError(
          f'config.data_dir={config.data_dir!r} does not exist: point it at the folder of '
          'data_batch_1..5 and test_batch, or set --config.download=True.')


def check_workdir(workdir: str) -> None:
  """Fails up front, not after an hour of training, when the workdir cannot be written."""
  if not workdir:
    raise ConfigError('--workdir is required for training.')
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir {workdir} is not writable ({e.strerror}): choose another '
                      'folder.') from None
