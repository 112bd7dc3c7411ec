"""The optimizer of the published recipe, as an optax chain.

The published PyTorch code trains with::

  optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
  # Stepped once per epoch:
  scheduler = CosineAnnealingLR(optimizer, T_max=num_epochs)
  ...
  loss.backward()
  torch.nn.utils.clip_grad_value_(params, 0.1)
  optimizer.step()

`make_optimizer` builds the same update from the config keys documented in
`configs/seresnet.py`:

  1. clip the raw gradient (`clip_grad_value_` / `clip_grad_norm_` run on
     `.grad` before `optimizer.step()`, so before weight decay is added);
  2. add `weight_decay * param` (torch's coupled weight decay, which SGD adds
     to the gradient inside `step()`; applied to every parameter, BatchNorm
     scales and biases included, as the published code does);
  3. heavy-ball momentum `buf = momentum * buf + g` (torch's dampening=0; its
     first-step `buf = g` equals optax's zero-initialised trace), with
     Nesterov's `g + momentum * buf` when `config.nesterov`;
  4. scale by `-learning_rate(step)`.

The schedules are functions of the optimizer step count (0 for the first
update), matching torch where `scheduler.step()` is called after each
`optimizer.step()` (per step) or after each epoch's last one (per epoch).
They are written as `start * sin^2(...) + end * sin^2(...)`, an exact
rewrite of torch's `end + (start - end) / 2 * (1 + cos(pi * pct))` that has
no cancellation, so they stay within a few float32 ulps of torch's float64
values even where the learning rate is tiny (the end of a cosine or
one-cycle schedule).
"""
import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('cosine', 'onecycle', 'constant')
GRAD_CLIPS = ('value', 'global_norm', 'none')


def _quoted(names: tuple[str, ...]) -> str:
  """`'a', 'b'` for the one-line error messages."""
  return ', '.join(repr(name) for name in names)


def _real(value: Any, name: str) -> float:
  """`value` as a finite float, or a ValueError naming `config.<name>`."""
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'config.{name}={value!r} is not a number') from None
  if isinstance(value, bool) or not math.isfinite(number):
    raise ValueError(f'config.{name}={value!r} is not a finite number')
  return number


def validate_optimizer_config(config: ml_collections.ConfigDict) -> None:
  """Checks the optimisation settings, raising one-line ValueErrors.

  Each message names the offending key (`config.<key>=<value> ...`) so a bad
  command-line override is found without a traceback hunt.

  Args:
    config: the experiment config (see `configs/seresnet.py`).

  Raises:
    ValueError: a setting is out of range or unknown.
  """
  lr = _real(config.learning_rate, 'learning_rate')
  if lr <= 0:
    raise ValueError(
        f'config.learning_rate={config.learning_rate!r} must be > 0')
  momentum = _real(config.momentum, 'momentum')
  if not 0 <= momentum < 1:
    raise ValueError(f'config.momentum={config.momentum!r} must be in [0, 1)')
  if _real(config.weight_decay, 'weight_decay') < 0:
    raise ValueError(
        f'config.weight_decay={config.weight_decay!r} must be >= 0')
  num_epochs = _real(config.num_epochs, 'num_epochs')
  if num_epochs != int(num_epochs) or num_epochs < 1:
    raise ValueError(
        f'config.num_epochs={config.num_epochs!r} must be an integer >= 1')

  if config.schedule not in SCHEDULES:
    raise ValueError(f'config.schedule={config.schedule!r} is not one of '
                     f'{_quoted(SCHEDULES)}')
  warmup = _real(config.warmup_epochs, 'warmup_epochs')
  if not 0 <= warmup < num_epochs:
    raise ValueError(f'config.warmup_epochs={config.warmup_epochs!r} must be '
                     f'in [0, config.num_epochs={config.num_epochs!r})')

  cycling = config.schedule == 'onecycle' and config.onecycle.cycle_momentum
  if config.schedule == 'onecycle':
    if warmup > 0:
      # Phase 1 of the one-cycle schedule is its warmup; silently ignoring the
      # key would hide a config mistake.
      raise ValueError(
          f'config.warmup_epochs={config.warmup_epochs!r} must be 0 with '
          "config.schedule='onecycle' (its first phase is the warmup)")
    pct_start = _real(config.onecycle.pct_start, 'onecycle.pct_start')
    if not 0 < pct_start < 1:
      raise ValueError(f'config.onecycle.pct_start='
                       f'{config.onecycle.pct_start!r} must be in (0, 1)')
    for key in ('div_factor', 'final_div_factor'):
      value = config.onecycle[key]
      if _real(value, f'onecycle.{key}') <= 0:
        raise ValueError(f'config.onecycle.{key}={value!r} must be > 0')
    if cycling:
      for key in ('base_momentum', 'max_momentum'):
        value = config.onecycle[key]
        if not 0 <= _real(value, f'onecycle.{key}') < 1:
          raise ValueError(f'config.onecycle.{key}={value!r} must be in [0, 1)')

  # torch.optim.SGD refuses Nesterov without momentum (the update would be
  # plain SGD, which is surely not what was meant).
  if config.nesterov and not cycling and momentum == 0:
    raise ValueError('config.nesterov=True needs config.momentum > 0')

  if config.grad_clip not in GRAD_CLIPS:
    raise ValueError(f'config.grad_clip={config.grad_clip!r} is not one of '
                     f'{_quoted(GRAD_CLIPS)}')
  if config.grad_clip != 'none':
    value = _real(config.grad_clip_value, 'grad_clip_value')
    if value <= 0:
      raise ValueError(
          f'config.grad_clip_value={config.grad_clip_value!r} must be > 0 '
          f'with config.grad_clip={config.grad_clip!r}')


def _check_steps_per_epoch(steps_per_epoch: int) -> int:
  if (isinstance(steps_per_epoch, bool) or
      int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1):
    raise ValueError(
        f'steps_per_epoch={steps_per_epoch!r} must be an integer >= 1')
  return int(steps_per_epoch)


def _warmup_steps(config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> int:
  # Python's round(): half-way cases go to the even integer.
  return round(float(config.warmup_epochs) * steps_per_epoch)


def _sin2(done: jnp.ndarray, length: float) -> jnp.ndarray:
  """sin(pi/2 * done / length)^2, accurate to a few ulps even when small."""
  return jnp.sin((0.5 * math.pi / length) * done)**2


def _annealing_cos(start: float, end: float, done: jnp.ndarray,
                   left: jnp.ndarray, length: float) -> jnp.ndarray:
  """torch's `_annealing_cos(start, end, pct)`, pct = done / length.

  torch computes `end + (start - end) / 2 * (1 + cos(pi * pct))`, which equals
  `start * cos^2(pi/2 * pct) + end * sin^2(pi/2 * pct)`; with
  `cos(pi/2 * pct) = sin(pi/2 * left / length)` (`left = length - done`, passed
  in so that it is exact where the caller can make it so) both terms are
  non-negative sines of small-enough arguments, so there is no cancellation.
  """
  return start * _sin2(left, length) + end * _sin2(done, length)


def _with_warmup(peak: float, warmup_steps: int, step: jnp.ndarray,
                 after: jnp.ndarray) -> jnp.ndarray:
  """Warmup from 0 (step 0) to `peak` (step `warmup_steps`), then `after`."""
  if warmup_steps == 0:
    return after
  return jnp.where(step < warmup_steps, peak * step / warmup_steps, after)


def _cosine_schedule(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.Schedule:
  """CosineAnnealingLR(T_max, eta_min=0), per epoch or per step, + warmup.

  Without warmup: per epoch, the learning rate of step s is torch's value after
  `s // steps_per_epoch` scheduler steps with T_max = num_epochs; per step, it
  is torch's value after s scheduler steps with T_max = num_epochs *
  steps_per_epoch.

  With W = round(warmup_epochs * steps_per_epoch) > 0 warmup steps: steps
  0..W-1 get `peak * s / W` (0 at the first step). From step W the cosine runs
  over the remaining steps, as if a fresh CosineAnnealingLR had been started at
  step W: per step, at `s - W` of T_max = total_steps - W; per epoch, it is
  stepped every steps_per_epoch steps counted from W, at
  `(s - W) // steps_per_epoch` of T_max = (total_steps - W) / steps_per_epoch
  (= num_epochs - warmup_epochs when the warmup is whole epochs).

  Past the end (which training never reaches) the rate stays at eta_min = 0
  instead of following torch's periodic continuation back up.
  """
  peak = float(config.learning_rate)
  total_steps = int(config.num_epochs) * steps_per_epoch
  warmup_steps = _warmup_steps(config, steps_per_epoch)
  decay_steps = total_steps - warmup_steps
  if decay_steps < 1:
    raise ValueError(f'config.warmup_epochs={config.warmup_epochs!r} leaves no '
                     f'steps for the cosine ({total_steps} steps in all)')
  per_step = bool(config.schedule_per_step)
  t_max = decay_steps if per_step else decay_steps / steps_per_epoch

  def schedule(count):
    step = jnp.asarray(count)
    since = jnp.maximum(step - warmup_steps, 0)
    if not per_step:
      since = since // steps_per_epoch
    # (1 + cos(pi t / T)) / 2 = sin^2(pi/2 (T - t) / T); T - t is exact.
    left = jnp.maximum(t_max - since.astype(float), 0.0)
    return _with_warmup(peak, warmup_steps, step, peak * _sin2(left, t_max))

  return schedule


def _onecycle_phases(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> tuple[int, float]:
  """(total_steps, end of phase 1) exactly as torch's OneCycleLR sets them."""
  total_steps = int(config.num_epochs) * steps_per_epoch
  # torch: phase 1 ends at float(pct_start * total_steps) - 1, phase 2 at
  # total_steps - 1; a step belongs to phase 1 when step <= that end.
  phase1_end = float(config.onecycle.pct_start * total_steps) - 1
  if phase1_end <= 0:
    # torch divides by zero (phase1_end == 0) or has no warm-up phase at all.
    raise ValueError(
        f'config.onecycle.pct_start={config.onecycle.pct_start!r} times '
        f'{total_steps} total steps must exceed 1 for a one-cycle warm-up '
        'phase')
  return total_steps, phase1_end


def _onecycle(start: float, peak: float, end: float, total_steps: int,
              phase1_end: float) -> optax.Schedule:
  """torch's two-phase cos annealing start -> peak -> end over total_steps."""
  last = total_steps - 1
  phase2_len = last - phase1_end

  def schedule(count):
    # torch raises past total_steps; hold the final value instead.
    step = jnp.clip(jnp.asarray(count), 0, last).astype(float)
    rising = _annealing_cos(start, peak, step, phase1_end - step, phase1_end)
    falling = _annealing_cos(peak, end, step - phase1_end, last - step,
                             phase2_len)
    return jnp.where(step <= phase1_end, rising, falling)

  return schedule


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (0 first).

  * 'cosine': torch's CosineAnnealingLR(T_max=num_epochs, eta_min=0) stepped
    once per epoch, or per step (T_max = num_epochs * steps_per_epoch) when
    `config.schedule_per_step`; optional linear warmup (see
    `_cosine_schedule` for exactly how the two join).
  * 'onecycle': torch's OneCycleLR(max_lr=learning_rate, total_steps=
    num_epochs * steps_per_epoch, pct_start, div_factor, final_div_factor,
    anneal_strategy='cos', three_phase=False), always stepped per step
    (`schedule_per_step` and `warmup_epochs` do not apply).
  * 'constant': `learning_rate`, after an optional linear warmup from 0.

  Args:
    config: the experiment config.
    steps_per_epoch: optimizer steps in one epoch.

  Returns:
    A schedule mapping the step count to the learning rate.
  """
  validate_optimizer_config(config)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  peak = float(config.learning_rate)

  if config.schedule == 'cosine':
    return _cosine_schedule(config, steps_per_epoch)

  if config.schedule == 'onecycle':
    total_steps, phase1_end = _onecycle_phases(config, steps_per_epoch)
    # The same float operations as torch's OneCycleLR.__init__.
    initial = peak / config.onecycle.div_factor
    final = initial / config.onecycle.final_div_factor
    return _onecycle(initial, peak, final, total_steps, phase1_end)

  # 'constant' (validate_optimizer_config rejected anything else).
  warmup_steps = _warmup_steps(config, steps_per_epoch)

  def constant(count):
    step = jnp.asarray(count)
    return _with_warmup(peak, warmup_steps, step,
                        jnp.full(step.shape, peak, dtype=float))

  return constant


def _cycles_momentum(config: ml_collections.ConfigDict) -> bool:
  return config.schedule == 'onecycle' and bool(config.onecycle.cycle_momentum)


def momentum_schedule(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> optax.Schedule:
  """The SGD momentum as a function of the optimizer step (0 first).

  Constant `config.momentum`, except for 'onecycle' with
  `onecycle.cycle_momentum`, where, as torch's OneCycleLR, it is annealed
  (cos) from max_momentum to base_momentum over phase 1 and back over phase 2
  (`config.momentum` is then unused, as torch overwrites it).

  Args:
    config: the experiment config.
    steps_per_epoch: optimizer steps in one epoch.

  Returns:
    A schedule mapping the step count to the momentum.
  """
  validate_optimizer_config(config)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  if _cycles_momentum(config):
    total_steps, phase1_end = _onecycle_phases(config, steps_per_epoch)
    high = float(config.onecycle.max_momentum)
    return _onecycle(high, float(config.onecycle.base_momentum), high,
                     total_steps, phase1_end)
  momentum = float(config.momentum)
  return lambda count: jnp.full(jnp.shape(count), momentum, dtype=float)


def _gradient_clipping(
    config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if config.grad_clip == 'value':
    # Per element, as torch.nn.utils.clip_grad_value_.
    return optax.clip(float(config.grad_clip_value))
  if config.grad_clip == 'global_norm':
    # As torch.nn.utils.clip_grad_norm_, except that torch scales by
    # max_norm / (norm + 1e-6): a relative difference of 1e-6 / norm.
    return optax.clip_by_global_norm(float(config.grad_clip_value))
  return optax.identity()


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """torch.optim.SGD with the published clipping and schedule, in optax.

  Args:
    config: the experiment config; validated first.
    steps_per_epoch: optimizer steps in one epoch (for the schedules).

  Returns:
    clip -> add weight_decay * params -> momentum trace -> scale by -lr. The
    `update` needs `params` (for the weight decay).

  Raises:
    ValueError: a bad optimisation setting (one line naming the key).
  """
  validate_optimizer_config(config)
  if _cycles_momentum(config):
    # The momentum of each update comes from the schedule; the trace keeps
    # its buffer across changes, as torch's momentum_buffer does.
    momentum = optax.inject_hyperparams(optax.trace, static_args='nesterov')(
        decay=momentum_schedule(config, steps_per_epoch),
        nesterov=bool(config.nesterov))
  else:
    momentum = optax.trace(
        decay=float(config.momentum), nesterov=bool(config.nesterov))
  return optax.chain(
      _gradient_clipping(config),
      optax.add_decayed_weights(float(config.weight_decay)),
      momentum,
      optax.scale_by_learning_rate(
          learning_rate_schedule(config, steps_per_epoch)),
  )
