"""Moves weights between the original PyTorch checkpoints and Flax variables.

The layout conversions (NCHW/OIHW in PyTorch, NHWC/HWIO in JAX) live here and nowhere else.

  variables = load_torch_checkpoint('ckpt.pth')          # or a state_dict, or the original dict
  logits = SEResNet(**infer_model_config(sd)).apply(variables, images_nhwc, train=False)
  state_dict = to_torch_state_dict(variables)            # back to TorchSEResNet names

Loading a file never runs code from it (input_pipeline.safe_pickle.load_torch_file).
"""
import math
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from flax_seresnet import config as config_lib
from flax_seresnet.errors import CheckpointError, ConfigError, DataError
from flax_seresnet.model import SEResNet, model_from_config
from input_pipeline import safe_pickle

# (collection, Flax leaf) -> PyTorch tensor name.
_LEAF_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
               ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
               ('batch_stats', 'var'): 'running_var'}
# Axis orders by rank: conv kernel HWIO <-> OIHW; dense kernel (in, out) <-> (out, in). The
# model flattens in PyTorch's (C, H, W) order, so a plain transpose maps the linear weight.
_TO_TORCH = {4: (3, 2, 0, 1), 2: (1, 0)}
_TO_FLAX = {4: (2, 3, 1, 0), 2: (1, 0)}


def _permute(value: np.ndarray, orders) -> np.ndarray:
  return np.transpose(value, orders[value.ndim]) if value.ndim in orders else value


def torch_key(collection: str, path: Tuple[str, ...]) -> str:
  """The state_dict key of the Flax variable `collection/path`."""
  *modules, leaf = path
  names = [{'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}.get(m, m) for m in modules]
  names = [re.sub(r'^residual_layers_(\d+)_(\d+)$', r'residual_layers.\1.\2', m) for m in names]
  return '.'.join(names + [_LEAF_NAMES[(collection, leaf)]])


def _as_numpy(key: str, value) -> np.ndarray:
  """A tensor or array of real numbers as a NumPy copy (jnp.asarray may alias a NumPy buffer on
  the CPU, and torch updates its tensors in place); only the step counters may be integers."""
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    value = (value.float() if value.is_floating_point() else value).numpy()
  if not isinstance(value, np.ndarray):
    raise CheckpointError(f'checkpoint key {key!r} holds a {type(value).__name__}, not a tensor.')
  kinds = 'fiub' if key.endswith('num_batches_tracked') else 'f'
  if value.dtype.kind not in kinds:
    raise CheckpointError(f'checkpoint key {key!r} holds {value.dtype} values, not real '
                          'floating-point numbers: not a trained SE-ResNet.')
  return np.array(value, copy=True)


def read_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, np.ndarray]:
  """A flat {torch key: numpy array} from a .pth path, the original checkpoint dict
  ({'net': state_dict, 'acc', 'epoch', 'config'}) or a plain state_dict. The DataParallel prefix
  'module.' is removed."""
  if isinstance(source, (str, os.PathLike)):
    try:
      source = safe_pickle.load_torch_file(source)  # runs no code from the file
    except DataError as e:
      raise CheckpointError(str(e)) from None
  if not isinstance(source, Mapping):
    raise CheckpointError(
        f'expected a state_dict or a checkpoint dict, got {type(source).__name__}.')
  for wrapper in ('net', 'state_dict', 'model'):
    if isinstance(source.get(wrapper), Mapping):
      source = source[wrapper]
      break
  if bad := [k for k in source if not isinstance(k, str)][:1]:
    raise CheckpointError(f'checkpoint has the key {bad[0]!r}, not a name: not a state_dict.')
  return {k.removeprefix('module.'): _as_numpy(k, v) for k, v in source.items()}


def infer_model_config(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """The SEResNet fields a state_dict was made with (for 32x32 inputs).

  Dropout cannot be seen in weights: 0. Several P give the same linear width (P = 5..8 all pool
  an 8x8 map to 1x1): P = map // s is chosen, s being the pooled side.
  """
  sd = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  blocks: Dict[int, int] = {}
  for key in sd:
    if match := re.match(r'residual_layers\.(\d+)\.(\d+)\.', key):
      blocks[int(match[1])] = max(blocks.get(int(match[1]), 0), int(match[2]) + 1)
  if not blocks or 'linear.weight' not in sd or sorted(blocks) != list(range(len(blocks))):
    raise CheckpointError('not an SE-ResNet state_dict: expected keys '
                          'residual_layers.{stage}.{block}.* with stages 0..N-1, and '
                          'linear.weight.')

  def shape(key, rank):  # a missing shortcut conv has size 1
    value = tuple(np.shape(sd[key])) if key in sd else (1,) * rank
    if len(value) != rank or 0 in value:
      raise CheckpointError(f'checkpoint key {key!r} has shape {value}: expected {rank} '
                            'non-zero dimensions.')
    return value
  stages = range(len(blocks))
  widths = tuple(shape(f'residual_layers.{s}.0.conv1.weight', 4)[0] for s in stages)
  final_map = max(32 >> (len(blocks) - 1), 1)  # the last map side for 32x32 inputs
  side = min(max(math.isqrt(shape('linear.weight', 2)[1] // widths[-1]), 1), final_map)
  config: Dict[str, Any] = {
      'stage_blocks': tuple(blocks[s] for s in stages),
      'widths': widths,
      'kernel_sizes': tuple(shape(f'residual_layers.{s}.0.conv1.weight', 4)[-1] for s in stages),
      'shortcut_kernel_sizes': tuple(shape(f'residual_layers.{s}.0.shortcut.0.weight', 4)[-1]
                                     for s in stages),
      'preact': 'bn_final.weight' in sd,
      'avg_pool_kernel_size': final_map // side,  # a bad width fails the shape check on load
      'num_classes': shape('linear.weight', 2)[0],
      'se_position': 'none',
  }
  for prefix, position in (('seblock', 'stem'), ('residual_layers.0.0.se', 'blocks')):
    if f'{prefix}.conv1.weight' in sd:
      hidden, channels = shape(f'{prefix}.conv1.weight', 4)[:2]
      config.update(se_position=position, se_reduction=max(channels // hidden, 1))
  try:
    config_lib.check_model(config)
  except ConfigError as e:
    raise CheckpointError(f'the checkpoint\'s shapes describe no possible SE-ResNet ({e})') \
        from None
  return config


def load_torch_checkpoint(source, model: Optional[Union[SEResNet, Mapping[str, Any]]] = None,
                          ) -> Dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} from a PyTorch checkpoint.

  Args:
    source: a path to a .pth file, the original checkpoint dict or a plain state_dict.
    model: the SEResNet (or a dict of its fields) to load into; inferred from the checkpoint's
      shapes when None.
  Raises:
    CheckpointError naming the first missing, unexpected or misshapen key.
  """
  state = read_state_dict(source)
  if model is None:
    model = SEResNet(**infer_model_config(state))
  elif not isinstance(model, SEResNet):
    model = model_from_config(model)
  expected = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  flat = {}
  for (collection, *path), spec in sorted(flax.traverse_util.flatten_dict(expected).items()):
    key = torch_key(collection, tuple(path))
    want = _permute(np.empty(spec.shape, np.uint8), _TO_TORCH).shape
    if key not in state:
      raise CheckpointError(
          f'checkpoint is missing {key!r} (expected shape {want}) for this SEResNet.')
    if state[key].shape != want:
      raise CheckpointError(
          f'checkpoint key {key!r} has shape {state[key].shape}, expected {want}.')
    flat[(collection, *path)] = jnp.asarray(_permute(state.pop(key), _TO_FLAX), spec.dtype)
  extra = sorted(k for k in state if not k.endswith('num_batches_tracked'))
  if extra:
    raise CheckpointError(f'checkpoint has key {extra[0]!r} that this SEResNet does not have '
                          f'({len(extra)} unexpected keys in all): other architecture?')
  return flax.traverse_util.unflatten_dict(flat)


def to_torch_state_dict(variables: Mapping[str, Any]) -> Dict[str, Any]:
  """A TorchSEResNet state_dict (torch tensors, float32) from Flax variables."""
  import torch
  state = {}
  for (collection, *path), value in flax.traverse_util.flatten_dict(dict(variables)).items():
    if collection in ('params', 'batch_stats'):
      key = torch_key(collection, tuple(path))
      array = _permute(np.asarray(jax.device_get(value), np.float32), _TO_TORCH)
      state[key] = torch.from_numpy(np.array(array, order='C'))  # a copy: torch writes in place
      if key.endswith('running_mean'):
        state[key.removesuffix('running_mean') + 'num_batches_tracked'] = torch.tensor(0)
  return state
