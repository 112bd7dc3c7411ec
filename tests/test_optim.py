"""flax_seresnet.optim against torch.optim, in the same process.

The schedules are compared at every step in JAX's default float32 (what
training uses) to torch's float64 values; the optimizer steps are compared in
float64 on both sides so that only real differences in the update show.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import seresnet as seresnet_config
from flax_seresnet import optim

RTOL = 1e-6


def _config(**overrides):
  config = seresnet_config.get_config()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _x64():
  """Context enabling float64 in JAX (jax.enable_x64 since JAX 0.8)."""
  enable = getattr(jax, 'enable_x64', None)
  if enable is not None:
    return enable(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _assert_close(actual, expected, rtol=RTOL):
  actual = np.asarray(actual, dtype=np.float64)
  expected = np.asarray(expected, dtype=np.float64)
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


def _torch_values(make_scheduler, num_steps, steps_per_epoch=None,
                  momentum=0.0):
  """lr and momentum torch uses at each optimizer step.

  Args:
    make_scheduler: optimizer -> torch scheduler.
    num_steps: optimizer steps to record.
    steps_per_epoch: step the scheduler after every this many optimizer steps
      (None: after every step).
    momentum: the SGD momentum (torch's OneCycleLR needs it > 0 to cycle it).

  Returns:
    (learning rates, momenta), one per optimizer step.
  """
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  optimizer = torch.optim.SGD([param], lr=0.1, momentum=momentum)
  scheduler = make_scheduler(optimizer)
  lrs, momenta = [], []
  for step in range(num_steps):
    group = optimizer.param_groups[0]
    lrs.append(group['lr'])
    momenta.append(group['momentum'])
    param.grad = torch.zeros_like(param)
    optimizer.step()
    if steps_per_epoch is None or (step + 1) % steps_per_epoch == 0:
      scheduler.step()
  return np.array(lrs), np.array(momenta)


def _ours(schedule, num_steps):
  """The schedule at steps 0..num_steps-1, both vectorised and jitted."""
  values = np.asarray(schedule(jnp.arange(num_steps)))
  jitted = jax.jit(schedule)
  for step in (0, num_steps // 2, num_steps - 1):
    # As optax calls it: a traced int32 scalar count (XLA's fusion may move
    # the last bit).
    _assert_close(jitted(jnp.int32(step)), values[step], rtol=3e-7)
  assert values.dtype == np.float32
  return values


@pytest.mark.parametrize('num_epochs,steps_per_epoch', [(7, 5), (200, 3)])
def test_cosine_per_epoch_matches_torch(num_epochs, steps_per_epoch):
  config = _config(num_epochs=num_epochs)
  num_steps = num_epochs * steps_per_epoch
  expected, _ = _torch_values(
      lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_epochs),
      num_steps, steps_per_epoch)
  ours = _ours(optim.learning_rate_schedule(config, steps_per_epoch), num_steps)
  _assert_close(ours, expected)
  # Constant within an epoch, and never 0 (the last epoch is T_max - 1).
  assert ours[steps_per_epoch - 1] == ours[0] == 0.1
  assert ours[-1] > 0


def test_cosine_per_step_matches_torch():
  config = _config(num_epochs=7, schedule_per_step=True)
  num_steps = 7 * 5
  expected, _ = _torch_values(
      lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_steps),
      num_steps)
  _assert_close(_ours(optim.learning_rate_schedule(config, 5), num_steps),
                expected)


ONECYCLE_CASES = [
    # (num_epochs, steps_per_epoch, pct_start, div_factor, final_div_factor)
    (3, 7, 0.25, 25.0, 1e4),
    (3, 7, 0.3, 25.0, 1e4),
    (4, 9, 0.45, 10.0, 100.0),
    (2, 50, 0.3, 25.0, 1e4),
]


@pytest.mark.parametrize('num_epochs,steps_per_epoch,pct_start,div,final_div',
                         ONECYCLE_CASES)
def test_onecycle_matches_torch(num_epochs, steps_per_epoch, pct_start, div,
                                final_div):
  config = _config(num_epochs=num_epochs, schedule='onecycle',
                   learning_rate=0.3, **{
                       'onecycle.pct_start': pct_start,
                       'onecycle.div_factor': div,
                       'onecycle.final_div_factor': final_div,
                       'onecycle.cycle_momentum': True,
                       'onecycle.base_momentum': 0.8,
                       'onecycle.max_momentum': 0.97,
                   })
  num_steps = num_epochs * steps_per_epoch
  expected_lr, expected_momentum = _torch_values(
      lambda opt: torch.optim.lr_scheduler.OneCycleLR(
          opt, max_lr=0.3, epochs=num_epochs, steps_per_epoch=steps_per_epoch,
          pct_start=pct_start, div_factor=div, final_div_factor=final_div,
          anneal_strategy='cos', three_phase=False, cycle_momentum=True,
          base_momentum=0.8, max_momentum=0.97),
      num_steps, momentum=0.9)
  ours_lr = _ours(optim.learning_rate_schedule(config, steps_per_epoch),
                  num_steps)
  ours_momentum = _ours(optim.momentum_schedule(config, steps_per_epoch),
                        num_steps)
  _assert_close(ours_lr, expected_lr)
  _assert_close(ours_momentum, expected_momentum)
  # The ends: max_lr / div at the start, that / final_div at the last step.
  _assert_close(ours_lr[0], 0.3 / div)
  _assert_close(ours_lr[-1], 0.3 / div / final_div)


def test_momentum_is_constant_without_cycling():
  for overrides in ({}, {'schedule': 'onecycle'}):
    config = _config(momentum=0.85, **overrides)
    values = _ours(optim.momentum_schedule(config, 4), config.num_epochs * 4)
    np.testing.assert_array_equal(values, np.float32(0.85))


def test_cosine_warmup_per_step_closed_form():
  # torch's LinearLR cannot start at 0 (start_factor > 0) and SequentialLR
  # restarts the cosine at the milestone, so compare to the closed form.
  config = _config(num_epochs=7, schedule_per_step=True, warmup_epochs=1.4)
  warmup, total = 7, 35  # round(1.4 * 5) = 7 steps of warmup.
  ours = _ours(optim.learning_rate_schedule(config, 5), total)
  steps = np.arange(total, dtype=np.float64)
  expected = np.where(
      steps < warmup, 0.1 * steps / warmup,
      0.1 * (1 + np.cos(np.pi * (steps - warmup) / (total - warmup))) / 2)
  assert ours[0] == 0
  _assert_close(ours[1:], expected[1:])


def test_cosine_warmup_per_epoch_continues_as_torch_cosine():
  # Whole-epoch warmup per epoch: after it, torch's CosineAnnealingLR with
  # T_max = num_epochs - warmup_epochs, stepped per epoch.
  num_epochs, steps_per_epoch, warmup_epochs = 9, 4, 2
  config = _config(num_epochs=num_epochs, warmup_epochs=float(warmup_epochs))
  warmup = warmup_epochs * steps_per_epoch
  num_steps = num_epochs * steps_per_epoch
  ours = _ours(optim.learning_rate_schedule(config, steps_per_epoch), num_steps)
  _assert_close(ours[:warmup], 0.1 * np.arange(warmup) / warmup)
  expected, _ = _torch_values(
      lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
          opt, num_epochs - warmup_epochs),
      num_steps - warmup, steps_per_epoch)
  _assert_close(ours[warmup:], expected)


def test_constant_with_and_without_warmup():
  ours = _ours(optim.learning_rate_schedule(_config(schedule='constant'), 3),
               30)
  np.testing.assert_array_equal(ours, np.float32(0.1))
  config = _config(schedule='constant', num_epochs=4, warmup_epochs=0.5)
  ours = _ours(optim.learning_rate_schedule(config, 8), 32)  # 4 warmup steps.
  _assert_close(ours[1:], np.minimum(np.arange(1, 32) / 4, 1.0) * 0.1)
  assert ours[0] == 0


def _torch_run(config, steps_per_epoch, init, grads):
  """Params after each step of the published torch training step."""
  params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
  optimizer = torch.optim.SGD(
      params, lr=config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, nesterov=config.nesterov)
  total = config.num_epochs * steps_per_epoch
  per_epoch = config.schedule == 'cosine' and not config.schedule_per_step
  if config.schedule == 'cosine':
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, config.num_epochs if per_epoch else total)
  elif config.schedule == 'onecycle':
    one = config.onecycle
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=total,
        pct_start=one.pct_start, div_factor=one.div_factor,
        final_div_factor=one.final_div_factor,
        cycle_momentum=one.cycle_momentum, base_momentum=one.base_momentum,
        max_momentum=one.max_momentum)
  else:
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
  history = []
  for step, step_grads in enumerate(grads):
    for param, grad in zip(params, step_grads):
      param.grad = torch.tensor(grad)
    if config.grad_clip == 'value':
      torch.nn.utils.clip_grad_value_(params, config.grad_clip_value)
    elif config.grad_clip == 'global_norm':
      torch.nn.utils.clip_grad_norm_(params, config.grad_clip_value)
    optimizer.step()
    if not per_epoch or (step + 1) % steps_per_epoch == 0:
      scheduler.step()
    history.append([p.detach().numpy().copy() for p in params])
  return history


def _optax_run(config, steps_per_epoch, init, grads):
  with _x64():
    tx = optim.make_optimizer(config, steps_per_epoch)
    params = {str(i): jnp.asarray(p) for i, p in enumerate(init)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for step_grads in grads:
      grad_tree = {str(i): jnp.asarray(g) for i, g in enumerate(step_grads)}
      updates, state = update(grad_tree, state, params)
      params = optax.apply_updates(params, updates)
      assert all(p.dtype == jnp.float64 for p in params.values())
      history.append([np.asarray(params[str(i)]) for i in range(len(init))])
  return history


SGD_CASES = {
    # The published recipe: value clip 0.1, cosine stepped per epoch.
    'published': {},
    'value_nesterov_per_step': dict(nesterov=True, schedule_per_step=True,
                                    weight_decay=0.05),
    'global_norm_onecycle_cycling': {
        'grad_clip': 'global_norm', 'grad_clip_value': 1.0,
        'schedule': 'onecycle', 'nesterov': True, 'weight_decay': 0.05,
        'onecycle.pct_start': 0.4, 'onecycle.cycle_momentum': True},
    'global_norm_onecycle': {
        'grad_clip': 'global_norm', 'grad_clip_value': 2.0,
        'schedule': 'onecycle'},
    'no_clip_constant': dict(grad_clip='none', schedule='constant',
                             weight_decay=0.05, momentum=0.5),
    'no_clip_nesterov_cosine': dict(grad_clip='none', nesterov=True),
}


@pytest.mark.parametrize('name', sorted(SGD_CASES))
def test_optimizer_matches_torch_sgd(name):
  steps_per_epoch, num_steps = 2, 6
  config = _config(num_epochs=3, **SGD_CASES[name])
  rng = np.random.default_rng(0)
  shapes = [(3, 4), (5,), (2, 3, 3, 2), ()]
  init = [rng.normal(size=s) for s in shapes]
  grads = [[rng.normal(size=s) for s in shapes] for _ in range(num_steps)]
  if config.grad_clip == 'value':
    # Make sure the clip is exercised (|g| ~ 1 against a bound of 0.1).
    assert np.mean(np.abs(np.concatenate([g.ravel() for g in grads[0]])) >
                   config.grad_clip_value) > 0.5

  expected = _torch_run(config, steps_per_epoch, init, grads)
  ours = _optax_run(config, steps_per_epoch, init, grads)
  # torch's clip_grad_norm_ divides by (norm + 1e-6), optax by norm.
  rtol = 1e-6 if config.grad_clip == 'global_norm' else 1e-10
  for step, (ours_params, torch_params) in enumerate(zip(ours, expected)):
    for i, (mine, theirs) in enumerate(zip(ours_params, torch_params)):
      # Compare the displacement from the start, the part the updates made,
      # relative to its largest element: where the clipped gradient and the
      # weight decay nearly cancel, an element's own relative error is large.
      moved = theirs - init[i]
      np.testing.assert_allclose(
          mine - init[i], moved, rtol=0, atol=rtol * np.max(np.abs(moved)),
          err_msg=f'{name}: parameter {i} after step {step + 1}')


def test_clip_happens_before_weight_decay():
  # With value clipping the decay term must survive the clip: a parameter of
  # 10 with weight decay 0.05 and a huge gradient moves by lr * (0.1 + 0.5).
  config = _config(momentum=0.0, weight_decay=0.05, schedule='constant')
  tx = optim.make_optimizer(config, 10)
  params = jnp.array([10.0, 10.0])
  updates, _ = tx.update(jnp.array([100.0, -100.0]), tx.init(params), params)
  _assert_close(updates, [-0.1 * (0.1 + 0.5), -0.1 * (-0.1 + 0.5)])


BAD_CONFIGS = [
    ('learning_rate', 0.0),
    ('learning_rate', -0.1),
    ('learning_rate', math.inf),
    ('learning_rate', math.nan),
    ('momentum', 1.0),
    ('momentum', -0.1),
    ('weight_decay', -1e-4),
    ('schedule', 'linear'),
    ('grad_clip', 'norm'),
    ('grad_clip_value', 0.0),
    ('grad_clip_value', -1.0),
    ('num_epochs', 0),
    ('warmup_epochs', -1.0),
    ('warmup_epochs', 200.0),
    ('onecycle.pct_start', 0.0),
    ('onecycle.pct_start', 1.0),
    ('onecycle.div_factor', 0.0),
    ('onecycle.final_div_factor', -1.0),
    ('onecycle.max_momentum', 1.5),
]


@pytest.mark.parametrize('key,value', BAD_CONFIGS)
def test_bad_config_raises_naming_the_key(key, value):
  overrides = {key: value}
  if key.startswith('onecycle.'):
    overrides.update(schedule='onecycle', **{'onecycle.cycle_momentum': True})
  config = _config(**overrides)
  for check in (optim.validate_optimizer_config,
                lambda c: optim.make_optimizer(c, 10),
                lambda c: optim.learning_rate_schedule(c, 10)):
    with pytest.raises(ValueError, match=rf'config\.{key}=') as info:
      check(config)
    assert '\n' not in str(info.value)


def test_bad_config_messages():
  with pytest.raises(ValueError) as info:
    optim.validate_optimizer_config(_config(schedule='x'))
  assert str(info.value) == (
      "config.schedule='x' is not one of 'cosine', 'onecycle', 'constant'")
  with pytest.raises(ValueError, match=r'^config\.grad_clip=.norm. is not one'):
    optim.make_optimizer(_config(grad_clip='norm'), 10)
  with pytest.raises(ValueError, match=r'config\.warmup_epochs='):
    optim.validate_optimizer_config(
        _config(schedule='onecycle', warmup_epochs=1.0))
  with pytest.raises(ValueError, match=r'config\.nesterov='):
    optim.validate_optimizer_config(_config(nesterov=True, momentum=0.0))
  # Too few steps for torch's phase 1 (it would divide by zero).
  with pytest.raises(ValueError, match=r'config\.onecycle\.pct_start='):
    optim.learning_rate_schedule(
        _config(schedule='onecycle', num_epochs=1,
                **{'onecycle.pct_start': 0.25}), 4)
  with pytest.raises(ValueError, match=r'steps_per_epoch='):
    optim.make_optimizer(_config(), 0)


def test_good_edge_configs_pass():
  # No clipping: the bound is unused, so any value is fine.
  optim.make_optimizer(_config(grad_clip='none', grad_clip_value=0.0), 10)
  optim.make_optimizer(_config(momentum=0.0, weight_decay=0.0), 10)
  optim.make_optimizer(_config(warmup_epochs=199.5), 10)
  optim.make_optimizer(_config(schedule='onecycle'), 391)

