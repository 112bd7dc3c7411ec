"""Every setting of a run, in one place: its default (the published recipe), what it means, the
rule its value must follow, and whether a resumed run may change it.

`defaults()` builds the config (configs/seresnet.py is exactly it); `validate` checks a config
before any data is read or anything compiles; `describe` lists the settings (main.py
--list_config); `resume_conflicts` says what a resume may not change.
"""
import dataclasses
import importlib
import json
import math
import re
from typing import Any, Callable, Optional

import ml_collections

from flax_seresnet.errors import ConfigError

NUM_CLASSES = 10  # every supported dataset is CIFAR-10
CLASS_IMAGES = 5000  # training images of each class
MAX_STAGES = 6    # each stage after the first halves the 32x32 map: 6 stages reach 1x1


def _number(integer=False, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
  def check(v):
    kinds = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kinds) or not math.isfinite(v):
      return 'must be an integer' if integer else 'must be a finite number'
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
      if hi == math.inf:
        return f'must be {">" if lo_open else ">="} {lo}'
      return f'must be in {"(" if lo_open else "["}{lo}, {hi}{")" if hi_open else "]"}'
  return check


def _kind(kind, name):
  return lambda v: None if isinstance(v, kind) else f'must be {name}'


def _one_of(*options):
  return lambda v: None if v in options else f'is not one of {options}'


def _one_of_named(module: str, name: str):
  """The options its own module defines (imported when a value is checked: listing the settings
  needs no jax)."""
  return lambda v: _one_of(*getattr(importlib.import_module(module), name))(v)


def _per_stage(odd=False):
  def check(v):
    if not isinstance(v, (tuple, list)) or not v or any(
        isinstance(x, bool) or not isinstance(x, int) or x < 1 or (odd and x % 2 == 0) for x in v):
      return f'must be a non-empty tuple of {"odd " if odd else ""}positive integers'
  return check


def _address(v):
  if not isinstance(v, str) or (v and not re.fullmatch(r'[^:\s]+:\d{1,5}', v)):
    return "must be '' (from the environment) or HOST:PORT, e.g. 10.0.0.1:1234"


@dataclasses.dataclass(frozen=True)
class Setting:
  default: Any
  rule: Callable[[Any], Optional[str]]  # the problem with a value, or None
  doc: str
  resumable: bool = False  # a resume may change it: it does not change what training computes


_INT0, _INT1, _BOOL, _STR = _number(True, 0), _number(True, 1), _kind(bool, 'True or False'), \
    _kind(str, 'a string')
_FRACTION, _POSITIVE = _number(lo=0.0, hi=1.0, hi_open=True), _number(lo=0.0, lo_open=True)
S, R = Setting, True
SETTINGS = {
    'name': S('seresnet', _STR, "the run's name, in its summary line", R),
    # The network (flax_seresnet.SEResNet's fields): the defaults are the published model.
    'model.stage_blocks': S((4, 4, 3), _per_stage(), 'residual blocks per stage'),
    'model.widths': S((64, 128, 256), _per_stage(), 'channels per stage'),
    'model.kernel_sizes': S((3, 3, 3), _per_stage(odd=True),
                            'conv kernel size per stage (odd: padding k//2 keeps the size)'),
    'model.shortcut_kernel_sizes': S((1, 1, 1), _per_stage(odd=True),
                                     'projection-shortcut kernel size per stage'),
    'model.se_position': S('stem', _one_of_named('flax_seresnet.model', 'SE_POSITIONS'),
                           "squeeze-and-excitation: 'stem' (published), 'blocks' or 'none'"),
    'model.se_reduction': S(16, _INT1, 'SE reduction (the published block: 64 -> 4 channels)'),
    'model.preact': S(False, _BOOL, 'pre-activation blocks instead of post-activation'),
    'model.dropout': S(0.0, _FRACTION, "dropout after every residual block and before the "
                       "classifier, as the original's `drop`"),
    'model.avg_pool_kernel_size': S(8, _INT1, "the paper's P: avg_pool2d(out, P) before the "
                                    "classifier (the original's code always pools globally)"),
    'model.num_classes': S(10, _number(True, NUM_CLASSES), 'classifier outputs'),
    'model.dtype': S('float32', _one_of_named('flax_seresnet.model', 'DTYPES'),
                     "compute dtype (parameters and BatchNorm "
                     "statistics stay float32)"),
    # Data.
    'dataset': S('cifar10', _one_of('cifar10', 'tfds', 'synthetic'),
                 "'cifar10' (the pickled python batches), 'tfds' (tensorflow-datasets' cifar10) "
                 "or 'synthetic' (random images, for speed benchmarks only)"),
    'data_dir': S('', _STR, "the python batches' folder; '': $CIFAR10_DATA_DIR, else "
                  '~/.cache/flax-seresnet/cifar-10-batches-py (downloaded if missing)', R),
    'download': S(False, _BOOL, 'also download into a data_dir given here when it is missing', R),
    'tfds_data_dir': S('', _STR, "dataset='tfds': tfds' data folder ('': its default)", R),
    'validation_size': S(0, _INT0, 'hold out N training images (N/10 per class, chosen by '
                         'seed) as a validation set that picks the best checkpoint; 0: train on '
                         'all 50,000, best by test accuracy (optimistic)'),
    'train_subset': S(0, _INT0, 'train on the first N training images only (0: all), counted '
                      'after the validation images are held out'),
    'test_subset': S(0, _INT0, 'evaluate on the first N test images only (0: all)', R),
    'augment': S(True, _BOOL, 'random crop and flip (False: normalisation only)'),
    'pad_mode': S('zeros', _one_of_named('input_pipeline.augment', 'PAD_MODES'),
                  "random-crop padding: 'zeros' (the published code) or 'reflect' (its paper)"),
    'crop_padding': S(4, _number(True, 0, 32), 'padding (pixels) before the random 32x32 crop'),
    'flip': S(True, _BOOL, 'random horizontal flips'),
    'drop_last': S(False, _BOOL, "drop the last partial batch (False: keep it, as torch's "
                   'DataLoader does)'),
    # Optimisation (flax_seresnet.optim).
    'batch_size': S(128, _INT1, 'global batch, over all devices and processes'),
    'eval_batch_size': S(1000, _INT1, 'global evaluation batch', R),
    'num_epochs': S(200, _INT1, 'epochs of the run (a resume may change it: the README says '
                    'what that does to the schedule)', R),
    'learning_rate': S(0.1, _POSITIVE, 'peak learning rate (max_lr of one-cycle)'),
    'learning_rate_batch_size': S(0, _INT0, '0: learning_rate as given; N: learning_rate is the '
                                  'rate for batch N, scaled linearly to batch_size'),
    'momentum': S(0.9, _FRACTION, 'SGD momentum (dampening 0, as torch)'),
    'nesterov': S(False, _BOOL, 'Nesterov momentum'),
    'weight_decay': S(5e-4, _number(lo=0.0), 'coupled weight decay on every parameter, added to '
                      'the gradient as torch.optim.SGD does'),
    'schedule': S('cosine', _one_of('cosine', 'onecycle', 'constant'),
                  "learning-rate schedule: 'cosine', 'onecycle' or 'constant'"),
    'schedule_per_step': S(False, _BOOL, 'cosine: a new rate every step (False: every epoch, as '
                           'the original steps CosineAnnealingLR)'),
    'cosine_epochs': S(0, _INT0, 'cosine T_max in epochs; 0: num_epochs (the original: 200)'),
    'warmup_epochs': S(0.0, _number(lo=0.0), 'linear warmup from 0 (cosine and constant only)'),
    'onecycle.pct_start': S(0.3, _number(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
                            'one-cycle: the fraction of the steps spent rising to the peak'),
    'onecycle.div_factor': S(25.0, _POSITIVE, 'one-cycle: starts at learning_rate / this'),
    'onecycle.final_div_factor': S(1e4, _POSITIVE, 'one-cycle: ends at the start rate / this'),
    'onecycle.cycle_momentum': S(False, _BOOL, "one-cycle: move the momentum against the rate "
                                 "(torch's default is True)"),
    'onecycle.base_momentum': S(0.85, _FRACTION, 'one-cycle: the lowest momentum'),
    'onecycle.max_momentum': S(0.95, _FRACTION, 'one-cycle: the highest momentum'),
    'grad_clip': S('value', _one_of('value', 'global_norm', 'none'), "'value' (clip_grad_value_, "
                   "published), 'global_norm' or 'none'"),
    'grad_clip_value': S(0.1, _number(lo=0.0), 'the bound of each element, or of the norm'),
    'label_smoothing': S(0.0, _FRACTION, 'label smoothing of the cross-entropy'),
    'ema_decay': S(0.0, _FRACTION, 'a moving average of the parameters, used for evaluation and '
                   'inference (0: off)'),
    # Evaluation.
    'eval_flip_tta': S(False, _BOOL, 'also average the logits of the mirrored images', R),
    'eval_every_epochs': S(1, _INT0, 'evaluate every N epochs (0: at the end only)', R),
    # Devices.
    'parallel': S('jit', _one_of('jit', 'pmap'), "'jit' (a device mesh, NamedSharding) or "
                  "'pmap'", R),
    'num_devices': S(0, _INT0, 'use the first N devices of a single process (0: all)'),
    'sync_batch_stats': S(True, _BOOL, 'BatchNorm statistics over the global batch (False: per '
                          'device, like DataParallel)'),
    'distributed.initialize': S('auto', _one_of('auto', 'yes', 'no'), "start jax.distributed: "
                                "'auto' (when the config or environment names several "
                                "processes), 'yes' or 'no'", R),
    'distributed.coordinator_address': S('', _address, "process 0's HOST:PORT ('': from the "
                                         'environment)', R),
    'distributed.num_processes': S(0, _INT0, 'processes of the run (0: from the environment)', R),
    'distributed.process_id': S(-1, _number(True, -1), "this process's index (-1: from the "
                                'environment)', R),
    'distributed.timeout_s': S(120, _INT1, 'seconds to wait for every process to join, or for a '
                               'silent one, before stopping', R),
    # Records and checkpoints.
    'seed': S(0, _number(True, 0, 2**63 - 1), 'the one seed: initial weights, order, '
              'augmentation, dropout'),
    'checkpoint_every_epochs': S(10, _INT0, 'also save every N epochs (the last epoch, a new '
                                 'best and an interruption are always saved)', R),
    'keep_checkpoints': S(3, _INT1, 'keep the newest N checkpoints, and the best', R),
    'progress_bar': S(True, _BOOL, 'show progress bars (on a terminal)', R),
    'max_epochs_this_run': S(0, _INT0, 'stop, with a checkpoint, after N epochs of this '
                             'command, to split long runs (0: no limit)', R),
}


def defaults() -> ml_collections.ConfigDict:
  """The published recipe: every setting at its default."""
  config = ml_collections.ConfigDict()
  for key, setting in SETTINGS.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    node[leaf] = setting.default
  return config


def flatten(tree, prefix: str = '') -> dict:
  """{'model.widths': ..., ...} of a nested config or dict."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, 'items'):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def describe(config=None) -> str:
  """One line per setting: key = value (the default, or `config`'s) and what it means."""
  values = flatten(config) if config is not None else {}
  return '\n'.join(f'{key} = {values.get(key, s.default)!r}  # {s.doc}'
                   for key, s in SETTINGS.items())


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate(config) -> None:
  """Raises ConfigError naming the first bad setting and what to do."""
  _require(isinstance(config, ml_collections.ConfigDict), f'the config is a '
           f'{type(config).__name__}: get_config() must return an ml_collections.ConfigDict '
           '(start from flax_seresnet.config.defaults())')
  values = flatten(config)
  unknown = sorted(set(values) - set(SETTINGS))
  _require(not unknown, f'config.{unknown[0] if unknown else ""} is not a known setting: '
           '`python main.py --list_config` lists them all.')
  missing = sorted(set(SETTINGS) - set(values))
  _require(not missing, f'config.{missing[0] if missing else ""} is missing: start from '
           'flax_seresnet.config.defaults() and change what you need.')
  for key, setting in SETTINGS.items():
    problem = setting.rule(values[key])
    _require(problem is None, f'config.{key}={values[key]!r} {problem}.')
  _validate_model(config.model)
  _validate_recipe(config)
  dist = config.distributed
  _require(dist.num_processes == 0 or config.num_devices == 0,
           f'config.num_devices={config.num_devices} works with one process only: use 0 (all '
           'devices) with config.distributed.')
  _require(dist.process_id < max(dist.num_processes, 1) or dist.num_processes == 0,
           f'config.distributed.process_id={dist.process_id} must be below '
           f'config.distributed.num_processes={dist.num_processes}.')


def check_model(fields: dict) -> None:
  """The rules of the model settings, for SEResNet fields from elsewhere (a .pth's shapes)."""
  for key, value in fields.items():
    problem = SETTINGS[f'model.{key}'].rule(value)
    _require(problem is None, f'model.{key}={value!r} {problem}')
  _validate_model(ml_collections.ConfigDict(dict(defaults().model.to_dict(), **fields)))


def _validate_model(model) -> None:
  stages = len(model.stage_blocks)
  _require(stages <= MAX_STAGES, f'config.model.stage_blocks has {stages} stages: use at most '
           f'{MAX_STAGES} (each stage after the first halves the 32x32 map).')
  for key in ('widths', 'kernel_sizes', 'shortcut_kernel_sizes'):
    _require(len(model[key]) == stages, f'config.model.{key} has {len(model[key])} entries for '
             f'{stages} stages (config.model.stage_blocks): give one per stage.')
  final_map = 32 // 2 ** (stages - 1)
  _require(model.avg_pool_kernel_size <= final_map,
           f'config.model.avg_pool_kernel_size={model.avg_pool_kernel_size} is larger than the '
           f'final {final_map}x{final_map} feature map: use at most {final_map}.')


def _validate_recipe(config) -> None:
  size = config.validation_size
  _require(size % NUM_CLASSES == 0, f'config.validation_size={size} must be a multiple of '
           f'{NUM_CLASSES} (the same number of images of each class): use e.g. '
           f'{size // NUM_CLASSES * NUM_CLASSES or NUM_CLASSES}.')
  _require(size < NUM_CLASSES * CLASS_IMAGES, f'config.validation_size={size} leaves no '
           f'training images of a class (CIFAR-10 has {CLASS_IMAGES} per class): use less.')
  _require(config.warmup_epochs < config.num_epochs, f'config.warmup_epochs='
           f'{config.warmup_epochs} must be below config.num_epochs={config.num_epochs}.')
  _require(config.cosine_epochs == 0 or config.cosine_epochs >= config.num_epochs,
           f'config.cosine_epochs={config.cosine_epochs} must be 0 (= num_epochs) or at least '
           f'config.num_epochs={config.num_epochs}.')
  onecycle = config.schedule == 'onecycle'
  _require(not onecycle or config.warmup_epochs == 0, f'config.warmup_epochs='
           f"{config.warmup_epochs} must be 0 with config.schedule='onecycle' (its first phase "
           'is the warmup).')
  _require(not config.nesterov or config.momentum > 0 or (onecycle and
                                                          config.onecycle.cycle_momentum),
           'config.nesterov=True needs config.momentum > 0.')
  _require(config.grad_clip == 'none' or config.grad_clip_value > 0, f'config.grad_clip_value='
           f'{config.grad_clip_value} must be > 0 with config.grad_clip={config.grad_clip!r}.')


def resume_conflicts(saved: dict, current) -> list[str]:
  """The settings a resume may not change that differ between a saved config and `current`
  (keys a run saved before they existed count as their default)."""
  saved, current = flatten(saved), flatten(current)
  same = lambda a, b: json.dumps(a) == json.dumps(b)  # tuples and JSON lists alike
  return [f'{key}: saved {saved.get(key, s.default)!r}, now {current[key]!r}'
          for key, s in SETTINGS.items()
          if not s.resumable and not same(saved.get(key, s.default), current[key])]
