"""The one check of a config (every key is documented in configs/seresnet.py), made before any
data is read or anything is compiled. The rest of the library trusts a validated config."""
import math

from flax_seresnet.errors import ConfigError
from flax_seresnet.model import DTYPES, SE_POSITIONS
from input_pipeline.augment import PAD_MODES

DATASETS = ('cifar10', 'tfds', 'synthetic')
SCHEDULES = ('cosine', 'onecycle', 'constant')
GRAD_CLIPS = ('value', 'global_norm', 'none')
PARALLEL_MODES = ('jit', 'pmap')
NUM_CLASSES = 10  # every supported dataset is CIFAR-10


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


def _per_stage(odd=False):
  def check(v):
    if not isinstance(v, (tuple, list)) or not v or any(
        isinstance(x, bool) or not isinstance(x, int) or x < 1 or (odd and x % 2 == 0) for x in v):
      return f'must be a non-empty tuple of {"odd " if odd else ""}positive integers'
  return check


_INT0, _INT1, _BOOL, _STR = _number(True, 0), _number(True, 1), _kind(bool, 'True or False'), \
    _kind(str, 'a string')
_FRACTION = _number(lo=0.0, hi=1.0, hi_open=True)
RULES = {
    'name': _STR,
    'model.stage_blocks': _per_stage(), 'model.widths': _per_stage(),
    'model.kernel_sizes': _per_stage(odd=True),  # odd: PyTorch's padding k//2 keeps the size
    'model.shortcut_kernel_sizes': _per_stage(odd=True),
    'model.se_position': _one_of(*SE_POSITIONS), 'model.se_reduction': _INT1,
    'model.preact': _BOOL, 'model.dropout': _FRACTION, 'model.avg_pool_kernel_size': _INT1,
    'model.num_classes': _number(True, NUM_CLASSES), 'model.dtype': _one_of(*DTYPES),
    'dataset': _one_of(*DATASETS), 'data_dir': _STR, 'download': _BOOL, 'tfds_data_dir': _STR,
    'train_subset': _INT0, 'test_subset': _INT0, 'augment': _BOOL,
    'pad_mode': _one_of(*PAD_MODES), 'crop_padding': _number(True, 0, 32), 'flip': _BOOL,
    'drop_last': _BOOL, 'batch_size': _INT1, 'eval_batch_size': _INT1, 'num_epochs': _INT1,
    'learning_rate': _number(lo=0.0, lo_open=True), 'momentum': _FRACTION, 'nesterov': _BOOL,
    'weight_decay': _number(lo=0.0), 'schedule': _one_of(*SCHEDULES),
    'schedule_per_step': _BOOL, 'warmup_epochs': _number(lo=0.0), 'cosine_epochs': _INT0,
    'onecycle.pct_start': _number(lo=0.0, hi=1.0, lo_open=True, hi_open=True),
    'onecycle.div_factor': _number(lo=0.0, lo_open=True),
    'onecycle.final_div_factor': _number(lo=0.0, lo_open=True),
    'onecycle.cycle_momentum': _BOOL, 'onecycle.base_momentum': _FRACTION,
    'onecycle.max_momentum': _FRACTION, 'grad_clip': _one_of(*GRAD_CLIPS),
    'grad_clip_value': _number(lo=0.0), 'label_smoothing': _FRACTION,
    'ema_decay': _FRACTION, 'eval_flip_tta': _BOOL, 'eval_every_epochs': _INT0,
    'parallel': _one_of(*PARALLEL_MODES), 'num_devices': _INT0, 'sync_batch_stats': _BOOL,
    'distributed.initialize': _one_of('auto', 'yes', 'no'),
    'distributed.coordinator_address': _STR, 'distributed.num_processes': _INT0,
    'distributed.process_id': _number(True, -1), 'seed': _INT0,
    'checkpoint_every_epochs': _INT0, 'keep_checkpoints': _INT1, 'progress_bar': _BOOL,
    'max_epochs_this_run': _INT0,
}


def _flatten(tree, prefix=''):
  for key, value in tree.items():
    if hasattr(value, 'items'):
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def validate(config) -> None:
  """Raises ConfigError naming the first bad setting and what to do."""
  values = dict(_flatten(config))
  unknown = sorted(set(values) - set(RULES))
  _require(not unknown, f'config.{unknown[0] if unknown else ""} is not a known setting: see '
           'configs/seresnet.py for every key.')
  missing = sorted(set(RULES) - set(values))
  _require(not missing, f'config.{missing[0] if missing else ""} is missing: start from '
           'configs/seresnet.py (get_config()) and change what you need.')
  for key, check in RULES.items():
    problem = check(values[key])
    _require(problem is None, f'config.{key}={values[key]!r} {problem}.')
  model = config.model
  stages = len(model.stage_blocks)
  for key in ('widths', 'kernel_sizes', 'shortcut_kernel_sizes'):
    _require(len(model[key]) == stages, f'config.model.{key} has {len(model[key])} entries for '
             f'{stages} stages (config.model.stage_blocks): give one per stage.')
  final_map = 32 // 2 ** (stages - 1)
  _require(model.avg_pool_kernel_size <= final_map,
           f'config.model.avg_pool_kernel_size={model.avg_pool_kernel_size} is larger than the '
           f'final {final_map}x{final_map} feature map: use at most {final_map}.')
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
  _require(config.distributed.num_processes == 0 or config.num_devices == 0,
           f'config.num_devices={config.num_devices} works with one process only: use 0 (all '
           'devices) with config.distributed.')
