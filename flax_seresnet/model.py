"""The SE-ResNet of the paper, in Flax linen, NHWC.

Defaults are the published network (4,697,742 parameters):
  stem: conv3x3 3->64 (no bias), BatchNorm, ReLU, one squeeze-and-excitation block;
  three stages of post-activation BasicBlocks, [4, 4, 3] blocks, widths 64/128/256, strides 1/2/2;
  8x8 average pool (global on the final 8x8 map), Linear(256, 10).

Layers carry the PyTorch module names (conv1, bn1, seblock, residual_layers_{stage}_{block}, ...)
so that `torch_bridge` maps one onto the other by name. Option values are checked by
flax_seresnet.config, not here.
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SE_POSITIONS = ('stem', 'blocks', 'none')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# torch.nn.Conv2d and nn.Linear draw weights from kaiming_uniform(a=sqrt(5)), that is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same bound: a from-scratch run starts
# from the PyTorch reference's distribution.
torch_weight_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class BatchNorm(nn.Module):
  """BatchNorm with torch.nn.BatchNorm2d's semantics, statistics always in float32.

  The variance takes two passes (mean, then mean squared deviation): E[x^2] - E[x]^2 loses all
  precision in float32 when |mean| >> std. The running variance is updated with the unbiased
  batch variance, as torch does. `axis_name` synchronises the statistics over a pmap axis;
  `num_groups` > 1 computes them per group of consecutive examples instead (per-device
  statistics, like torch DataParallel, under a jit-sharded batch).
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
    xg = x.astype(jnp.float32)
    mean, var = ra_mean.value, ra_var.value
    if train:
      xg = xg.reshape((self.num_groups, -1) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      sync = (lambda v: jax.lax.pmean(v, self.axis_name)) if self.axis_name else (lambda v: v)
      mean = sync(jnp.mean(xg, axes, keepdims=True))  # (groups, 1, 1, 1, C)
      var = sync(jnp.mean(jnp.square(xg - mean), axes, keepdims=True))
      if not self.is_initializing():
        count = xg[0].size // features
        if self.axis_name:
          count *= jax.lax.psum(1, self.axis_name)
        m = 1 - self.momentum
        ra_mean.value = self.momentum * ra_mean.value + m * mean.reshape(-1, features).mean(0)
        ra_var.value = self.momentum * ra_var.value + m * (
            var.reshape(-1, features).mean(0) * count / max(count - 1, 1))
    y = (xg - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.reshape(x.shape).astype(self.dtype)


def conv(features: int, kernel: int, stride: int, in_features: int, dtype, *, name: str,
         use_bias: bool = False) -> nn.Conv:
  """A PyTorch-style convolution: symmetric padding k//2 (Flax 'SAME' pads stride-2 convs
  asymmetrically, which would shift every feature map against the reference)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=torch_weight_init,
                 bias_init=torch_bias_init(in_features * kernel * kernel), name=name)


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
  """Post-activation (published) or pre-activation residual block; dropout on its output."""
  features: int
  stride: int = 1
  kernel_size: int = 3
  shortcut_kernel_size: int = 1
  preact: bool = False
  use_se: bool = False
  se_reduction: int = 16
  dropout: float = 0.0
  dtype: Any = jnp.float32
  norm: Any = BatchNorm

  @nn.compact
  def __call__(self, x, train: bool):
    in_features, f, k = x.shape[-1], self.features, self.kernel_size
    project = self.stride != 1 or in_features != f
    conv1 = conv(f, k, self.stride, in_features, self.dtype, name='conv1')
    conv2 = conv(f, k, 1, f, self.dtype, name='conv2')
    shortcut = conv(f, self.shortcut_kernel_size, self.stride, in_features, self.dtype,
                    name='shortcut_conv') if project else (lambda v: v)
    if self.preact:
      out = nn.relu(self.norm(name='bn1')(x, train))
      residual = shortcut(out) if project else x
      out = conv2(nn.relu(self.norm(name='bn2')(conv1(out), train)))
    else:
      residual = shortcut(x)
      if project:
        residual = self.norm(name='shortcut_bn')(residual, train)
      out = nn.relu(self.norm(name='bn1')(conv1(x), train))
      out = self.norm(name='bn2')(conv2(out), train)
    if self.use_se:
      out = SEBlock(self.se_reduction, self.dtype, name='se')(out)
    out = out + residual
    out = out if self.preact else nn.relu(out)
    return nn.Dropout(self.dropout, deterministic=not train)(out)  # as the original's `drop`


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
  se_position: str = 'stem'  # one of SE_POSITIONS
  se_reduction: int = 16
  preact: bool = False
  dropout: float = 0.0       # after every residual block and before the classifier
  avg_pool_kernel_size: int = 8  # the paper's P: avg_pool2d(out, P), then flatten
  num_classes: int = 10
  dtype: Any = 'float32'     # a key of DTYPES (or a jnp dtype)
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None  # pmap axis to synchronise BatchNorm statistics over
  bn_groups: int = 1                   # >1: per-device statistics under a jit-sharded batch

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not jnp.issubdtype(x.dtype, jnp.floating):  # uint8 pixels would train on 0..255 silently
      raise TypeError(f'SEResNet takes normalised floating-point images, not {x.dtype}: apply '
                      'input_pipeline.normalize to uint8 images first')
    dtype = DTYPES.get(self.dtype, self.dtype)
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=dtype, axis_name=self.bn_axis_name, num_groups=self.bn_groups)
    x = conv(self.widths[0], 3, 1, x.shape[-1], dtype, name='conv1')(x.astype(dtype))
    x = nn.relu(norm(name='bn1')(x, train))
    if self.se_position == 'stem':
      x = SEBlock(self.se_reduction, dtype, name='seblock')(x)
    for stage, (blocks, width) in enumerate(zip(self.stage_blocks, self.widths)):
      for block in range(blocks):
        x = BasicBlock(features=width, stride=2 if stage and not block else 1,
                       kernel_size=self.kernel_sizes[stage],
                       shortcut_kernel_size=self.shortcut_kernel_sizes[stage],
                       preact=self.preact, use_se=self.se_position == 'blocks',
                       se_reduction=self.se_reduction, dropout=self.dropout, dtype=dtype,
                       norm=norm, name=f'residual_layers_{stage}_{block}')(x, train)
    if self.preact:
      x = nn.relu(norm(name='bn_final')(x, train))
    p = self.avg_pool_kernel_size
    x = nn.avg_pool(x.astype(jnp.float32), (p, p), strides=(p, p))  # float32 sums, as jnp.mean
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # PyTorch's (C, H, W) flatten order
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=torch_weight_init, bias_init=torch_bias_init(x.shape[-1]),
                 name='linear')(x)
    return x.astype(jnp.float32)  # logits in float32 for a stable loss


def model_from_config(model_config, **overrides) -> SEResNet:
  """SEResNet from `config.model` (a ConfigDict or a dict); lists become tuples."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in dict(model_config).items()}
  return SEResNet(**{**fields, **overrides})
