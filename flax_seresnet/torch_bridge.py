"""Moves weights between the original PyTorch checkpoints and Flax variables.

The layout conversions (NCHW/OIHW in PyTorch, NHWC/HWIO in JAX) live here and nowhere else.

  variables = load_torch_checkpoint('ckpt.pth')          # or a state_dict, or the original dict
  logits = SEResNet(**infer_model_config(sd)).apply(variables, images_nhwc, train=False)
  state_dict = to_torch_state_dict(variables)            # back to TorchSEResNet names

Loading a file never runs code from it: torch.load(..., weights_only=True).
"""
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from flax_seresnet.model import SEResNet, model_from_config

# Flax module name -> PyTorch module name, for the names that differ beyond '_' vs '.'.
_FLAX_TO_TORCH_MODULE = {'shortcut_conv': 'shortcut.0', 'shortcut_bn': 'shortcut.1'}
# (collection, Flax leaf) -> PyTorch tensor name.
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
_IGNORED_TORCH_SUFFIXES = ('num_batches_tracked',)


from flax_seresnet.errors import CheckpointError as CheckpointMismatchError


def _torch_module_name(flax_module: str) -> str:
  if flax_module in _FLAX_TO_TORCH_MODULE:
    return _FLAX_TO_TORCH_MODULE[flax_module]
  match = re.fullmatch(r'residual_layers_(\d+)_(\d+)', flax_module)
  if match:
    return f'residual_layers.{match[1]}.{match[2]}'
  return flax_module


def torch_key(collection: str, path: Tuple[str, ...]) -> str:
  """The state_dict key of the Flax variable `collection/path`."""
  *modules, leaf = path
  names = [_torch_module_name(m) for m in modules]
  return '.'.join(names + [_LEAF_NAMES[(collection, leaf)]])


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:   # conv kernel HWIO -> OIHW
    return np.transpose(value, (3, 2, 0, 1))
  if value.ndim == 2:   # dense kernel (in, out) -> (out, in)
    return value.T
  return value


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:   # OIHW -> HWIO
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def _torch_shape(flax_shape: Tuple[int, ...]) -> Tuple[int, ...]:
  return tuple(_to_torch_layout(np.empty(flax_shape, np.uint8)).shape)


# --- Reading checkpoints ------------------------------------------------------------------------

def _as_numpy(value) -> np.ndarray:
  # Always copy: jnp.asarray may alias a NumPy buffer on the CPU, and torch updates its
  # tensors (running statistics) in place.
  if hasattr(value, 'detach'):  # a torch.Tensor
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy().copy()
  return np.array(value, copy=True)


def read_state_dict(source: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, np.ndarray]:
  """A flat {torch key: numpy array} from a .pth path, the original checkpoint dict
  ({'net': state_dict, 'acc', 'epoch', 'config'}) or a plain state_dict. The DataParallel prefix
  'module.' is removed."""
  if isinstance(source, (str, os.PathLike)):
    import torch  # only needed for files
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such PyTorch checkpoint file.')
    try:
      source = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle errors, refused globals, truncated zip files
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointMismatchError(
          f'{path}: not a loadable PyTorch checkpoint with weights_only=True ({first}).') from e
  if not isinstance(source, Mapping):
    raise CheckpointMismatchError(
        f'expected a state_dict or a checkpoint dict, got {type(source).__name__}.')
  for wrapper in ('net', 'state_dict', 'model'):
    if wrapper in source and isinstance(source[wrapper], Mapping):
      source = source[wrapper]
      break
  state = {}
  for key, value in source.items():
    key = key[len('module.'):] if key.startswith('module.') else key
    state[key] = value
  return {k: _as_numpy(v) for k, v in state.items()}


def infer_model_config(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """The SEResNet fields a state_dict was made with (dropout cannot be seen in weights: 0)."""
  sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
  blocks: Dict[int, int] = {}
  for key in sd:
    match = re.match(r'residual_layers\.(\d+)\.(\d+)\.', key)
    if match:
      stage, block = int(match[1]), int(match[2])
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  if not blocks or 'linear.weight' not in sd:
    raise CheckpointMismatchError(
        'not an SE-ResNet state_dict: expected keys residual_layers.{stage}.{block}.* and '
        'linear.weight.')
  stages = range(len(blocks))
  shape = lambda k: tuple(np.shape(sd[k]))
  config: Dict[str, Any] = {
      'stage_blocks': tuple(blocks[s] for s in stages),
      'widths': tuple(shape(f'residual_layers.{s}.0.conv1.weight')[0] for s in stages),
      'kernel_sizes': tuple(shape(f'residual_layers.{s}.0.conv1.weight')[-1] for s in stages),
      'shortcut_kernel_sizes': tuple(
          shape(f'residual_layers.{s}.0.shortcut.0.weight')[-1]
          if f'residual_layers.{s}.0.shortcut.0.weight' in sd else 1 for s in stages),
      'preact': 'bn_final.weight' in sd,
      'num_classes': shape('linear.weight')[0],
  }
  if 'seblock.conv1.weight' in sd:
    hidden, channels = shape('seblock.conv1.weight')[:2]
    config.update(se_position='stem', se_reduction=max(channels // hidden, 1))
  elif 'residual_layers.0.0.se.conv1.weight' in sd:
    hidden, channels = shape('residual_layers.0.0.se.conv1.weight')[:2]
    config.update(se_position='blocks', se_reduction=max(channels // hidden, 1))
  else:
    config['se_position'] = 'none'
  return config


# --- Conversions ---------------------------------------------------------------------------------

def _expected_variables(model: SEResNet):
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def load_torch_checkpoint(source, model: Optional[Union[SEResNet, Mapping[str, Any]]] = None,
                          ) -> Dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} from a PyTorch checkpoint.

  Args:
    source: a path to a .pth file, the original checkpoint dict or a plain state_dict.
    model: the SEResNet (or a dict of its fields) to load into; inferred from the checkpoint's
      shapes when None.
  Raises:
    CheckpointMismatchError naming the first missing, unexpected or misshapen key.
  """
  state = read_state_dict(source)
  if model is None:
    model = SEResNet(**infer_model_config(state))
  elif not isinstance(model, SEResNet):
    model = model_from_config(model)
  expected = flax.traverse_util.flatten_dict(flax.core.unfreeze(_expected_variables(model)))
  used = set()
  flat = {}
  for (collection, *path), spec in sorted(expected.items()):
    key = torch_key(collection, tuple(path))
    want = _torch_shape(spec.shape)
    if key not in state:
      raise CheckpointMismatchError(
          f'checkpoint is missing {key!r} (expected shape {want}) for this SEResNet.')
    value = state[key]
    if tuple(value.shape) != want:
      raise CheckpointMismatchError(
          f'checkpoint key {key!r} has shape {tuple(value.shape)}, expected {want}.')
    flat[(collection, *path)] = jnp.asarray(_to_flax_layout(value), dtype=spec.dtype)
    used.add(key)
  extra = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_TORCH_SUFFIXES))
  if extra:
    raise CheckpointMismatchError(
        f'checkpoint has key {extra[0]!r} that this SEResNet does not have '
        f'({len(extra)} unexpected keys in all): other architecture?')
  return flax.traverse_util.unflatten_dict(flat)


def to_torch_state_dict(variables: Mapping[str, Any]) -> Dict[str, Any]:
  """A TorchSEResNet state_dict (torch tensors, float32) from Flax variables."""
  import torch
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(variables)))
  state = {}
  for (collection, *path), value in flat.items():
    if collection not in ('params', 'batch_stats'):
      continue
    array = np.asarray(jax.device_get(value), dtype=np.float32)
    state[torch_key(collection, tuple(path))] = torch.from_numpy(
        np.array(_to_torch_layout(array), order='C', copy=True))
  for key in [k for k in state if k.endswith('.running_mean')]:
    state[key[:-len('running_mean')] + 'num_batches_tracked'] = torch.tensor(0)
  return state
