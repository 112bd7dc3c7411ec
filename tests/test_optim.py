"""flax_seresnet.optim against torch.optim in the same process.

Schedules: JAX's default float32 (what training uses) against torch's float64, with an absolute
tolerance of 1e-6 of the peak (a relative one explodes where the rate nears 0). The optimizer:
float64 on both sides. Each check also shows that a broken variant fails it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from configs import seresnet as seresnet_config
from flax_seresnet import optim
from flax_seresnet.errors import ConfigError

TOL = 1e-6  # of the peak


def _config(**overrides):
  config = seresnet_config.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _torch_values(make_scheduler, num_steps, steps_per_epoch=None, lr=0.1, momentum=0.0):
  """(lr, momentum) torch uses at each optimizer step; the scheduler steps per epoch or step."""
  param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
  optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
  scheduler = make_scheduler(optimizer)
  lrs, momenta = [], []
  for step in range(num_steps):
    lrs.append(optimizer.param_groups[0]['lr'])
    momenta.append(optimizer.param_groups[0]['momentum'])
    param.grad = torch.zeros_like(param)
    optimizer.step()
    if steps_per_epoch is None or (step + 1) % steps_per_epoch == 0:
      scheduler.step()
  return np.array(lrs), np.array(momenta)


def _ours(schedule, num_steps):
  """Steps 0..num_steps-1, vectorised; a jitted int32 scalar count (as optax calls it) agrees."""
  values = np.broadcast_to(np.asarray(schedule(jnp.arange(num_steps)), np.float64), num_steps)
  jitted = jax.jit(schedule)
  for step in (0, num_steps // 2, num_steps - 1):
    np.testing.assert_allclose(jitted(jnp.int32(step)), values[step], rtol=3e-7)
  return values


def _error(ours, expected, peak):
  return np.max(np.abs(ours - expected)) / peak


def _assert_matches(ours, expected, peak):
  assert _error(ours, expected, peak) < TOL
  if np.ptp(expected) > 0:  # control: one step late fails the same check
    assert _error(ours[1:], expected[:-1], peak) > TOL


COSINE_CASES = {
    # name: (num_epochs, steps_per_epoch, overrides)
    'per_epoch': (7, 5, {}),
    'per_epoch_published_200': (200, 3, {}),
    'per_step': (7, 5, {'schedule_per_step': True}),
    'published_cut_to_40_epochs': (40, 2, {'cosine_epochs': 200}),
    'per_step_horizon_200': (40, 2, {'cosine_epochs': 200, 'schedule_per_step': True}),
    'warmup_horizon': (10, 3, {'cosine_epochs': 12, 'warmup_epochs': 1.0}),
    'warmup_whole_epochs': (9, 4, {'warmup_epochs': 2.0}),
    'warmup_part_epochs': (9, 4, {'warmup_epochs': 1.5}),  # T_max = 7.5 epochs
    'warmup_per_step': (7, 5, {'warmup_epochs': 1.4, 'schedule_per_step': True}),
    'warmup_per_step_horizon': (8, 3, {'warmup_epochs': 0.5, 'schedule_per_step': True,
                                       'cosine_epochs': 20}),
}


@pytest.mark.parametrize('name', sorted(COSINE_CASES))
def test_cosine_matches_torch(name):
  num_epochs, steps_per_epoch, overrides = COSINE_CASES[name]
  config = _config(num_epochs=num_epochs, learning_rate=0.2, **overrides)
  per_step = config.schedule_per_step
  total = num_epochs * steps_per_epoch
  warmup = round(config.warmup_epochs * steps_per_epoch)
  decay = (config.cosine_epochs or num_epochs) * steps_per_epoch - warmup
  t_max = decay if per_step else decay / steps_per_epoch
  # After the warmup, a fresh CosineAnnealingLR.
  cosine, _ = _torch_values(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max),
                            total - warmup, None if per_step else steps_per_epoch, lr=0.2)
  expected = np.concatenate([0.2 * np.arange(warmup) / warmup, cosine])
  _assert_matches(_ours(optim.learning_rate_schedule(config, steps_per_epoch), total),
                  expected, 0.2)


@pytest.mark.parametrize('warmup_epochs', [0.0, 0.5])
def test_constant_matches_torch(warmup_epochs):
  config = _config(schedule='constant', num_epochs=4, warmup_epochs=warmup_epochs)
  warmup = round(warmup_epochs * 8)
  ramp = lambda s: min(s / warmup, 1) if warmup else 1
  expected, _ = _torch_values(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, ramp), 32)
  _assert_matches(_ours(optim.learning_rate_schedule(config, 8), 32), expected, 0.1)


ONECYCLE_CASES = [
    # (num_epochs, steps_per_epoch, pct_start, div_factor, final_div_factor, cycle_momentum)
    (3, 7, 0.25, 25.0, 1e4, True),
    (3, 7, 0.3, 25.0, 1e4, False),
    (4, 9, 0.45, 10.0, 100.0, True),
    (2, 50, 0.3, 25.0, 1e4, True),
    (1, 3, 0.5, 25.0, 1e4, False),  # phase 1 ends at step 0.5
]


@pytest.mark.parametrize('num_epochs,steps_per_epoch,pct,div,final_div,cycle', ONECYCLE_CASES)
def test_onecycle_matches_torch(num_epochs, steps_per_epoch, pct, div, final_div, cycle):
  config = _config(num_epochs=num_epochs, schedule='onecycle', learning_rate=0.3, **{
      'onecycle.pct_start': pct, 'onecycle.div_factor': div,
      'onecycle.final_div_factor': final_div, 'onecycle.cycle_momentum': cycle,
      'onecycle.base_momentum': 0.8, 'onecycle.max_momentum': 0.97})
  total = num_epochs * steps_per_epoch
  expected_lr, expected_momentum = _torch_values(
      lambda opt: torch.optim.lr_scheduler.OneCycleLR(
          opt, max_lr=0.3, total_steps=total, pct_start=pct, div_factor=div,
          final_div_factor=final_div, anneal_strategy='cos', three_phase=False,
          cycle_momentum=cycle, base_momentum=0.8, max_momentum=0.97),
      total, momentum=0.9)
  _assert_matches(_ours(optim.learning_rate_schedule(config, steps_per_epoch), total),
                  expected_lr, 0.3)
  momentum = optim.momentum_schedule(config, steps_per_epoch)  # config.momentum when not cycled
  _assert_matches(_ours(momentum, total) if cycle else np.full(total, momentum),
                  expected_momentum, 0.97)
  if total >= 100:  # control: optax's own one-cycle puts the phase boundary elsewhere
    theirs = jax.vmap(optax.cosine_onecycle_schedule(total, 0.3, pct, div, final_div))
    assert _error(theirs(jnp.arange(total)), expected_lr, 0.3) > TOL


def test_errors_that_need_steps_per_epoch():
  config = _config(schedule='onecycle', num_epochs=1, **{'onecycle.pct_start': 0.25})
  with pytest.raises(ConfigError, match=r'^config\.onecycle\.pct_start=0\.25 [^\n]*$'):
    optim.make_optimizer(config, 4)  # torch would divide by zero
  config = _config(num_epochs=1, warmup_epochs=0.6)
  with pytest.raises(ConfigError, match=r'^config\.warmup_epochs=0\.6 [^\n]*$'):
    optim.make_optimizer(config, 1)  # rounds to the one step there is


def _torch_run(config, steps_per_epoch, init, grads):
  """Params after each step of the published torch training step."""
  params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
  optimizer = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=config.nesterov)
  total = config.num_epochs * steps_per_epoch
  per_epoch = config.schedule == 'cosine' and not config.schedule_per_step
  if config.schedule == 'cosine':
    horizon = config.cosine_epochs or config.num_epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, horizon if per_epoch else horizon * steps_per_epoch)
  elif config.schedule == 'onecycle':
    one = config.onecycle
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=total, pct_start=one.pct_start,
        div_factor=one.div_factor, final_div_factor=one.final_div_factor,
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


def _optax_error(tx, init, grads, expected):
  """Largest error of the displacements from init, each relative to the largest torch one."""
  with jax.enable_x64(True):
    params = [jnp.asarray(p) for p in init]
    state = tx.init(params)
    update = jax.jit(tx.update)
    worst = 0.0
    for step_grads, theirs in zip(grads, expected):
      updates, state = update([jnp.asarray(g) for g in step_grads], state, params)
      params = optax.apply_updates(params, updates)
      assert all(p.dtype == jnp.float64 for p in params)
      for mine, their, start in zip(params, theirs, init):
        # Not per element: where the clipped gradient and the decay nearly cancel, an element's
        # own relative error is large.
        worst = max(worst, _error(np.asarray(mine) - start, their - start,
                                  np.max(np.abs(their - start))))
  return worst


SGD_CASES = {
    'published': {},
    'published_cut_to_40_epochs': {'cosine_epochs': 200},
    'value_nesterov_per_step': {'nesterov': True, 'schedule_per_step': True,
                                'weight_decay': 0.05},
    'global_norm_onecycle_cycling': {
        'grad_clip': 'global_norm', 'grad_clip_value': 1.0, 'schedule': 'onecycle',
        'nesterov': True, 'weight_decay': 0.05, 'onecycle.pct_start': 0.4,
        'onecycle.cycle_momentum': True},
    'global_norm_onecycle': {'grad_clip': 'global_norm', 'grad_clip_value': 2.0,
                             'schedule': 'onecycle'},
    'no_clip_constant': {'grad_clip': 'none', 'schedule': 'constant', 'weight_decay': 0.05,
                         'momentum': 0.5},
    'no_clip_nesterov_cosine': {'grad_clip': 'none', 'nesterov': True},
}


@pytest.mark.parametrize('name', sorted(SGD_CASES))
def test_optimizer_matches_torch_sgd(name):
  steps_per_epoch, num_steps = 2, 6
  config = _config(num_epochs=3, **SGD_CASES[name])
  rng = np.random.default_rng(0)
  shapes = [(3, 4), (5,), (2, 3, 3, 2), ()]
  init = [rng.normal(size=s) for s in shapes]
  grads = [[rng.normal(size=s) for s in shapes] for _ in range(num_steps)]
  expected = _torch_run(config, steps_per_epoch, init, grads)
  # torch's clip_grad_norm_ divides by (norm + 1e-6), optax by the norm.
  tol = 1e-6 if config.grad_clip == 'global_norm' else 1e-10
  assert _optax_error(optim.make_optimizer(config, steps_per_epoch), init, grads, expected) < tol


def test_clip_happens_before_weight_decay(monkeypatch):
  # The same check as above fails when the decay is added before the clip.
  config = _config(num_epochs=3, weight_decay=0.05)
  rng = np.random.default_rng(1)
  init, grads = [rng.normal(size=7)], [[rng.normal(size=7)] for _ in range(4)]
  expected = _torch_run(config, 2, init, grads)
  assert _optax_error(optim.make_optimizer(config, 2), init, grads, expected) < 1e-10
  chain = optax.chain
  monkeypatch.setattr(optax, 'chain', lambda clip, decay, *rest: chain(decay, clip, *rest))
  assert _optax_error(optim.make_optimizer(config, 2), init, grads, expected) > 1e-3
