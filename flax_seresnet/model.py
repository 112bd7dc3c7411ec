"""The SE-ResNet of the paper, in Flax linen, NHWC.

Defaults are the published network (4,697,742 parameters):
  stem: conv3x3 3->64 (no bias), BatchNorm, ReLU, one squeeze-and-excitation block;
  three stages of post-activation BasicBlocks, [4, 4, 3] blocks, widths 64/128/256, strides 1/2/2;
  global average pool (the published 8x8 pool on an 8x8 map), Linear(256, 10).

Layers carry the PyTorch module names (conv1, bn1, seblock, residual_layers_{stage}_{block}, ...)
so that `torch_bridge` maps one onto the other by name.
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SE_POSITIONS = ('stem', 'blocks', 'none')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


# --- Initialisation that follows PyTorch's defaults ----------------------------------------------
# torch.nn.Conv2d and nn.Linear draw weights from kaiming_uniform(a=sqrt(5)), that is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same bound. Starting from the same
# distribution keeps a from-scratch run comparable with the PyTorch reference.
torch_weight_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nn.Module):
  """BatchNorm with PyTorch's semantics.

  Differences from flax.linen.BatchNorm, each needed to match torch.nn.BatchNorm2d:
  the running variance is updated with the unbiased batch variance (n / (n - 1)), as torch does;
  statistics are always computed in float32, whatever the compute dtype.
  `axis_name` synchronises the statistics over a pmap axis; `num_groups` > 1 computes them per
  group of consecutive examples instead (per-device statistics, like torch DataParallel, under a
  jit-sharded batch whose devices each hold one group).
  """
  momentum: float = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  num_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    if not train:
      mean, var = ra_mean.value, ra_var.value
    else:
      x32 = x.astype(jnp.float32)
      groups = self.num_groups
      xg = x32.reshape((groups, -1) + x.shape[1:])
      reduce_axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axis=reduce_axes)               # (groups, C)
      mean_sq = jnp.mean(jnp.square(xg), axis=reduce_axes)
      if self.axis_name is not None:
        mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      count = xg[0].size // features
      if self.axis_name is not None:
        count *= jax.lax.psum(1, self.axis_name)
      if not self.is_initializing():
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = (self.momentum * ra_mean.value
                         + (1 - self.momentum) * jnp.mean(mean, axis=0))
        ra_var.value = (self.momentum * ra_var.value
                        + (1 - self.momentum) * jnp.mean(unbiased, axis=0))
      # Broadcast each group's statistics over its examples.
      shape = (groups,) + (1,) * (xg.ndim - 2) + (features,)
      mean = mean.reshape(shape)
      var = var.reshape(shape)
      mul = jax.lax.rsqrt(var + self.epsilon) * scale
      y = (xg - mean) * mul + bias
      return y.reshape(x.shape).astype(self.dtype)

    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (x.astype(jnp.float32) - mean) * mul + bias
    return y.astype(self.dtype)


def conv(features: int, kernel: int, stride: int, in_features: int, dtype, *, name: str,
         use_bias: bool = False) -> nn.Conv:
  """A PyTorch-style convolution: symmetric padding k//2 (Flax 'SAME' pads stride-2 convs
  asymmetrically, which would shift every feature map against the reference)."""
  fan_in = in_features * kernel * kernel
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=torch_weight_init,
                 bias_init=torch_bias_init(fan_in), name=name)


class SEBlock(nn.Module):
  """Squeeze and excitation: x * sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2)."""
  reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    hidden = max(channels // self.reduction, 1)
    w = jnp.mean(x, axis=(1, 2), keepdims=True)
    w = nn.relu(conv(hidden, 1, 1, channels, self.dtype, name='conv1', use_bias=True)(w))
    w = nn.sigmoid(conv(channels, 1, 1, hidden, self.dtype, name='conv2', use_bias=True)(w))
    return x * w


class BasicBlock(nn.Module):
  """Post-activation (published) or pre-activation residual block with two convolutions."""
  features: int
  stride: int
  kernel_size: int = 3
  shortcut_kernel_size: int = 1
  preact: bool = False
  use_se: bool = False
  se_reduction: int = 16
  dtype: Any = jnp.float32
  norm: Any = BatchNorm

  @nn.compact
  def __call__(self, x, train: bool):
    in_features = x.shape[-1]
    k, f = self.kernel_size, self.features
    needs_projection = self.stride != 1 or in_features != f

    def shortcut(inp):
      if not needs_projection:
        return inp
      s = conv(f, self.shortcut_kernel_size, self.stride, in_features, self.dtype,
               name='shortcut_conv')(inp)
      return s if self.preact else self.norm(name='shortcut_bn')(s, train)

    if self.preact:
      out = nn.relu(self.norm(name='bn1')(x, train))
      residual = shortcut(out) if needs_projection else x
      out = conv(f, k, self.stride, in_features, self.dtype, name='conv1')(out)
      out = nn.relu(self.norm(name='bn2')(out, train))
      out = conv(f, k, 1, f, self.dtype, name='conv2')(out)
    else:
      residual = shortcut(x)
      out = conv(f, k, self.stride, in_features, self.dtype, name='conv1')(x)
      out = nn.relu(self.norm(name='bn1')(out, train))
      out = conv(f, k, 1, f, self.dtype, name='conv2')(out)
      out = self.norm(name='bn2')(out, train)
    if self.use_se:
      out = SEBlock(self.se_reduction, self.dtype, name='se')(out)
    out = out + residual
    return out if self.preact else nn.relu(out)


class SEResNet(nn.Module):
  """The paper's SE-ResNet; the defaults are the published network.

  Call as `SEResNet().apply(variables, images_nhwc, train=False)` with variables
  {'params', 'batch_stats'}; with train=True pass mutable=['batch_stats'] and, when dropout > 0,
  rngs={'dropout': key}.
  """
  stage_blocks: Sequence[int] = (4, 4, 3)
  widths: Sequence[int] = (64, 128, 256)
  kernel_sizes: Sequence[int] = (3, 3, 3)
  shortcut_kernel_sizes: Sequence[int] = (1, 1, 1)
  se_position: str = 'stem'
  se_reduction: int = 16
  preact: bool = False
  dropout: float = 0.0
  num_classes: int = 10
  dtype: Any = 'float32'
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None  # pmap axis to synchronise BatchNorm statistics over
  bn_groups: int = 1                   # >1: per-device statistics under a jit-sharded batch

  def _check(self):
    n = len(self.stage_blocks)
    for name in ('widths', 'kernel_sizes', 'shortcut_kernel_sizes'):
      if len(getattr(self, name)) != n:
        raise ValueError(f'SEResNet.{name} has {len(getattr(self, name))} entries but '
                         f'stage_blocks has {n}: give one per stage.')
    if self.se_position not in SE_POSITIONS:
      raise ValueError(f'SEResNet.se_position={self.se_position!r} is not one of {SE_POSITIONS}.')
    if self.compute_dtype is None:
      raise ValueError(f'SEResNet.dtype={self.dtype!r} is not one of {tuple(DTYPES)}.')
    if any(k % 2 == 0 for k in tuple(self.kernel_sizes) + tuple(self.shortcut_kernel_sizes)):
      raise ValueError('SEResNet kernel sizes must be odd (PyTorch padding k//2 keeps the size).')

  @property
  def compute_dtype(self):
    if isinstance(self.dtype, str):
      return DTYPES.get(self.dtype)
    return jnp.dtype(self.dtype).type if jnp.dtype(self.dtype).name in DTYPES else None

  @nn.compact
  def __call__(self, x, train: bool = False):
    self._check()
    dtype = self.compute_dtype
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=dtype, axis_name=self.bn_axis_name, num_groups=self.bn_groups)
    x = x.astype(dtype)
    in_ch = x.shape[-1]
    x = conv(self.widths[0], 3, 1, in_ch, dtype, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x, train))
    if self.se_position == 'stem':
      x = SEBlock(self.se_reduction, dtype, name='seblock')(x)
    for stage, (blocks, width) in enumerate(zip(self.stage_blocks, self.widths)):
      for block in range(blocks):
        stride = 1 if (stage == 0 or block > 0) else 2
        x = BasicBlock(width, stride, self.kernel_sizes[stage], self.shortcut_kernel_sizes[stage],
                       self.preact, self.se_position == 'blocks', self.se_reduction, dtype, norm,
                       name=f'residual_layers_{stage}_{block}')(x, train)
    if self.preact:
      x = nn.relu(norm(name='bn_final')(x, train))
    x = jnp.mean(x, axis=(1, 2))
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    fan_in = x.shape[-1]
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=torch_weight_init, bias_init=torch_bias_init(fan_in),
                 name='linear')(x)
    return x.astype(jnp.float32)  # logits in float32 for a stable loss


def model_from_config(model_config, **overrides) -> SEResNet:
  """Builds SEResNet from `config.model` (an ml_collections ConfigDict or a dict)."""
  fields = dict(model_config)
  for key in ('stage_blocks', 'widths', 'kernel_sizes', 'shortcut_kernel_sizes'):
    if key in fields:
      fields[key] = tuple(fields[key])
  fields.update(overrides)
  known = set(SEResNet.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'config.model has unknown keys {unknown}; known keys: {sorted(known)}.')
  return SEResNet(**fields)


def init_variables(model: SEResNet, key, image_size: int = 32):
  """Parameters and BatchNorm statistics for 32x32x3 inputs (shapes do not depend on batch)."""
  return jax.jit(model.init, static_argnames='train')(
      key, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
