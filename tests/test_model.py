"""Shapes, dtypes and parameter counts of SEResNet for each configuration option."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_seresnet import SEResNet
from flax_seresnet.model import BatchNorm, model_from_config

PUBLISHED_PARAMETERS = 4_697_742


def abstract_variables(model, batch=2):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, 32, 32, 3)),
                                           train=False))


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_published_parameter_count():
  variables = abstract_variables(SEResNet())
  assert set(variables) == {'params', 'batch_stats'}
  assert count(variables['params']) == PUBLISHED_PARAMETERS
  # 2 statistics per BatchNorm channel: 24 BatchNorms over the stem and blocks.
  bn_channels = count(variables['batch_stats']) // 2
  assert bn_channels == (64 + 4 * 2 * 64 + (2 * 128 + 128) + 3 * 2 * 128 + (2 * 256 + 256)
                         + 2 * 2 * 256)


@pytest.mark.parametrize('pool', [4, 2, 1])
def test_parameter_count_with_a_smaller_average_pool(pool):
  # avg_pool2d(out, P) leaves a (8 // P)^2 map per channel: the classifier input grows.
  side = 8 // pool
  params = abstract_variables(SEResNet(avg_pool_kernel_size=pool))['params']
  assert count(params) == PUBLISHED_PARAMETERS - (256 * 10 + 10) + (256 * side * side * 10 + 10)


def test_published_model_shapes_and_layout():
  params = abstract_variables(SEResNet())['params']
  assert params['conv1']['kernel'].shape == (3, 3, 3, 64)
  assert 'bias' not in params['conv1']
  assert params['seblock']['conv1']['kernel'].shape == (1, 1, 64, 4)
  assert params['seblock']['conv2']['bias'].shape == (64,)
  assert params['residual_layers_1_0']['shortcut_conv']['kernel'].shape == (1, 1, 64, 128)
  assert 'shortcut_conv' not in params['residual_layers_1_1']
  assert params['linear']['kernel'].shape == (256, 10)
  assert 'se' not in params['residual_layers_0_0']  # no SE inside the published blocks


def test_full_size_forward_eval_shape():
  model = SEResNet()
  variables = abstract_variables(model)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                       jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.float32))
  chex.assert_shape(out, (128, 10))
  assert out.dtype == jnp.float32
  out, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables,
      jax.ShapeDtypeStruct((128, 32, 32, 3), jnp.float32))
  chex.assert_trees_all_equal_shapes(updates['batch_stats'], variables['batch_stats'])


@pytest.mark.parametrize('option,check', [
    (dict(se_position='blocks'),
     lambda p: p['residual_layers_2_2']['se']['conv1']['kernel'].shape == (1, 1, 256, 16)
     and 'seblock' not in p),
    (dict(se_position='none'),
     lambda p: 'seblock' not in p and 'se' not in p['residual_layers_0_0']),
    (dict(se_reduction=8), lambda p: p['seblock']['conv1']['kernel'].shape == (1, 1, 64, 8)),
    (dict(stage_blocks=(2, 2, 2)), lambda p: 'residual_layers_0_2' not in p
     and 'residual_layers_2_1' in p),
    (dict(widths=(32, 64, 128)), lambda p: p['linear']['kernel'].shape == (128, 10)),
    (dict(widths=(64, 64, 64)), lambda p: 'shortcut_conv' in p['residual_layers_1_0']),
    (dict(kernel_sizes=(5, 3, 3)),
     lambda p: p['residual_layers_0_0']['conv1']['kernel'].shape == (5, 5, 64, 64)),
    (dict(shortcut_kernel_sizes=(1, 3, 3)),
     lambda p: p['residual_layers_1_0']['shortcut_conv']['kernel'].shape == (3, 3, 64, 128)),
    (dict(preact=True), lambda p: 'bn_final' in p and 'shortcut_bn' not in p['residual_layers_1_0']
     and p['residual_layers_1_0']['bn1']['scale'].shape == (64,)),
    (dict(num_classes=100), lambda p: p['linear']['bias'].shape == (100,)),
    (dict(stage_blocks=(1, 1, 1, 1), widths=(16, 32, 64, 128), kernel_sizes=(3,) * 4,
          shortcut_kernel_sizes=(1,) * 4, avg_pool_kernel_size=4),
     lambda p: 'residual_layers_3_0' in p and p['linear']['kernel'].shape == (128, 10)),
    (dict(avg_pool_kernel_size=4), lambda p: p['linear']['kernel'].shape == (256 * 2 * 2, 10)),
    (dict(dropout=0.3), lambda p: p['linear']['kernel'].shape == (256, 10)),
])
def test_configuration_options(option, check):
  model = SEResNet(**option)
  variables = abstract_variables(model)
  assert check(variables['params'])
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((4, 32, 32, 3)), train=False), variables)
  chex.assert_shape(out, (4, option.get('num_classes', 10)))


TINY = dict(stage_blocks=(1, 1, 1), widths=(8, 16, 32))


@pytest.mark.parametrize('option', [{}, dict(preact=True), dict(se_position='blocks'),
                                    dict(dropout=0.5), dict(kernel_sizes=(5, 3, 1))])
def test_small_batch_forward_train_and_eval(option):
  model = SEResNet(**TINY, **option)
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits = model.apply(variables, x, train=False)
  chex.assert_shape(logits, (6, 10))
  chex.assert_tree_all_finite(logits)
  logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                rngs={'dropout': jax.random.key(2)})
  chex.assert_tree_all_finite(logits)
  # train=True updates the running statistics; eval leaves them alone.
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_dropout_only_in_training():
  model = SEResNet(**TINY, dropout=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  a = model.apply(variables, x, train=False)
  b = model.apply(variables, x, train=False)
  chex.assert_trees_all_equal(a, b)
  c, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                     rngs={'dropout': jax.random.key(3)})
  d, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                     rngs={'dropout': jax.random.key(4)})
  assert not np.allclose(c, d)


def test_bfloat16_compute_keeps_float32_parameters_and_is_close():
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  model32 = SEResNet(**TINY)
  model16 = SEResNet(**TINY, dtype='bfloat16')
  variables = model32.init(jax.random.key(0), x, train=False)
  variables16 = model16.init(jax.random.key(0), x, train=False)
  chex.assert_trees_all_equal_dtypes(variables, variables16)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables16))
  out32 = model32.apply(variables, x, train=False)
  out16 = model16.apply(variables, x, train=False)
  assert out16.dtype == jnp.float32  # logits come back in float32 for the loss
  scale = float(jnp.max(jnp.abs(out32)))
  assert float(jnp.max(jnp.abs(out32 - out16))) <= 0.05 * scale + 0.02
  # bfloat16 really computes in bfloat16: the results are not identical.
  assert not np.array_equal(np.asarray(out32), np.asarray(out16))


def test_bfloat16_full_size_eval_shape_keeps_float32_state():
  model = SEResNet(dtype='bfloat16')
  variables = abstract_variables(model)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=True,
                                             mutable=['batch_stats']), variables)
  assert {x.dtype for x in jax.tree.leaves(out[1])} == {jnp.dtype('float32')}


def test_torch_default_initialisation_bounds():
  # One block per stage keeps the published widths, hence the fan-ins checked below.
  init = jax.jit(SEResNet(stage_blocks=(1, 1, 1)).init, static_argnames='train')
  variables = init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  p = variables['params']
  for kernel, fan_in in [(p['conv1']['kernel'], 27), (p['residual_layers_2_0']['conv2']['kernel'],
                                                      256 * 9), (p['linear']['kernel'], 256)]:
    bound = 1 / np.sqrt(fan_in)
    assert float(jnp.max(jnp.abs(kernel))) <= bound
    # Uniform on [-b, b] has std b / sqrt(3).
    np.testing.assert_allclose(float(jnp.std(kernel)), bound / np.sqrt(3), rtol=0.1)
  assert float(jnp.max(jnp.abs(p['linear']['bias']))) <= 1 / 16
  assert float(jnp.std(p['linear']['bias'])) > 0
  chex.assert_trees_all_equal(p['bn1']['scale'], jnp.ones(64))
  chex.assert_trees_all_equal(variables['batch_stats']['bn1']['var'], jnp.ones(64))


def test_model_from_config_matches_defaults():
  from configs import seresnet
  model = model_from_config(seresnet.get_config().model)
  assert model == SEResNet()


@pytest.mark.parametrize('mode', ['plain', 'groups', 'axis_name', 'bfloat16'])
def test_batchnorm_statistics_far_from_zero_in_every_mode(mode):
  """|mean| / std = 3000, where E[x^2] - E[x]^2 in float32 loses the variance entirely."""
  rng = np.random.RandomState(0)
  x = (300 + 0.1 * rng.randn(8, 4, 4, 3)).astype(np.float32)
  x[4:] += 0.3  # halves that differ: per-group and synchronised statistics differ too
  if mode == 'bfloat16':  # bfloat16 cannot hold 300 +- 0.1; round to what it holds
    x = np.asarray(jnp.asarray(20 + rng.randn(8, 4, 4, 3), jnp.bfloat16), np.float32)
  groups = 2 if mode == 'groups' else 1
  bn = BatchNorm(momentum=0.0, num_groups=groups, axis_name='d' if mode == 'axis_name' else None,
                 dtype=jnp.bfloat16 if mode == 'bfloat16' else jnp.float32)
  variables = bn.init(jax.random.key(0), x, train=False)
  apply = lambda xs: bn.apply(variables, xs.astype(bn.dtype), train=True, mutable=['batch_stats'])
  if mode == 'axis_name':  # two replicas of 4 examples, statistics synchronised over 'd'
    y, updates = jax.vmap(apply, axis_name='d')(x.reshape(2, 4, 4, 4, 3))
    y, updates = y.reshape(x.shape), jax.tree.map(lambda v: v[0], updates)
  else:
    y, updates = apply(x)
  assert y.dtype == bn.dtype
  assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype('float32')}
  xg = x.astype(np.float64).reshape(groups, -1, 3)
  n = xg.shape[1]
  mean, var = xg.mean(1, keepdims=True), xg.var(1, keepdims=True)
  expected = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
  np.testing.assert_allclose(np.asarray(y, np.float32), expected,
                             atol=0.03 if mode == 'bfloat16' else 5e-3)
  np.testing.assert_allclose(updates['batch_stats']['mean'], mean.mean(0).ravel(), rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'],
                             (var * n / (n - 1)).mean(0).ravel(), rtol=1e-3)
