"""The published optimizer (torch SGD + clip_grad_value_ + a scheduler) as an optax chain.

The chain: clip the raw gradient (torch clips `.grad` before `optimizer.step()`) -> add
`weight_decay * param` (torch's coupled decay, on every parameter) -> momentum trace (torch's
dampening 0; its first `buf = g` equals optax's zero-initialised trace) -> scale by -lr(step).
A schedule maps the optimizer step count (0 first) to the value torch uses for that step.
The config module checks every key before this runs; only what needs steps_per_epoch is checked
here.
"""
import jax.numpy as jnp
import ml_collections
import optax

from flax_seresnet.errors import ConfigError


def _warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return round(config.warmup_epochs * steps_per_epoch)  # half-way cases go to the even integer


def _cosine(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """CosineAnnealingLR(T_max, eta_min=0) per epoch or per step, started fresh after the warmup."""
  horizon = config.cosine_epochs or config.num_epochs
  warmup = _warmup_steps(config, steps_per_epoch)
  decay_steps = horizon * steps_per_epoch - warmup
  if decay_steps < 1:
    raise ConfigError(
        f'config.warmup_epochs={config.warmup_epochs!r} rounds to {warmup} steps, all of the '
        f'cosine\'s {horizon} epochs x {steps_per_epoch} steps; lower it')
  if config.schedule_per_step:
    return optax.cosine_decay_schedule(peak_learning_rate(config), decay_steps)
  # Per epoch: the scheduler has stepped once per steps_per_epoch steps since the warmup.
  per_epoch = optax.cosine_decay_schedule(peak_learning_rate(config),
                                          decay_steps / steps_per_epoch)
  return lambda count: per_epoch(count // steps_per_epoch)


def _annealing_cos(start, end, pct):
  return end + (start - end) / 2 * (jnp.cos(jnp.pi * pct) + 1)  # torch's formula


def _onecycle(config: ml_collections.ConfigDict, steps_per_epoch: int, start: float,
              peak: float, end: float) -> optax.Schedule:
  """torch OneCycleLR's two cos phases start -> peak -> end, per step, held after the last."""
  # Not optax.cosine_onecycle_schedule: it ends phase 1 at int(pct * total), torch at pct*total-1.
  total = config.num_epochs * steps_per_epoch
  phase1_end = float(config.onecycle.pct_start * total) - 1
  if phase1_end <= 0:  # torch would divide by zero or skip the first phase
    raise ConfigError(
        f'config.onecycle.pct_start={config.onecycle.pct_start!r} times the {total} training '
        'steps must exceed 1 (a one-cycle warmup of over one step); raise it or train longer')

  def schedule(count):
    step = jnp.minimum(count, total - 1)
    return jnp.where(step <= phase1_end, _annealing_cos(start, peak, step / phase1_end),
                     _annealing_cos(peak, end, (step - phase1_end) / (total - 1 - phase1_end)))

  return schedule


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """config.learning_rate, scaled linearly from batch learning_rate_batch_size to batch_size
  when set: derived here, where it is used, so a batch-size override keeps it right."""
  if not config.learning_rate_batch_size:
    return config.learning_rate
  return config.learning_rate * config.batch_size / config.learning_rate_batch_size


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """The learning rate by optimizer step: 'cosine', 'onecycle' or 'constant' (see the config)."""
  peak = peak_learning_rate(config)
  if config.schedule == 'onecycle':
    initial = peak / config.onecycle.div_factor  # the same float operations as torch
    return _onecycle(config, steps_per_epoch, initial, peak,
                     initial / config.onecycle.final_div_factor)
  after = (_cosine(config, steps_per_epoch) if config.schedule == 'cosine'
           else optax.constant_schedule(peak))
  warmup = _warmup_steps(config, steps_per_epoch)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def momentum_schedule(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> float | optax.Schedule:
  """config.momentum, or one-cycle's max -> base -> max schedule when it cycles the momentum."""
  one = config.onecycle
  if config.schedule != 'onecycle' or not one.cycle_momentum:
    return config.momentum
  return _onecycle(config, steps_per_epoch, one.max_momentum, one.base_momentum, one.max_momentum)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """clip -> add weight_decay * params -> momentum -> scale by -lr; `update` needs `params`."""
  clip = {
      'value': optax.clip,  # per element, as clip_grad_value_
      # torch's clip_grad_norm_ scales by bound / (norm + 1e-6), optax by bound / norm.
      'global_norm': optax.clip_by_global_norm,
      'none': lambda _: optax.identity(),
  }[config.grad_clip](config.grad_clip_value)
  momentum = momentum_schedule(config, steps_per_epoch)
  # inject_hyperparams keeps the trace's buffer as the momentum changes, as torch's SGD does.
  trace = (optax.inject_hyperparams(optax.trace, static_args='nesterov') if callable(momentum)
           else optax.trace)
  return optax.chain(clip, optax.add_decayed_weights(config.weight_decay),
                     trace(decay=momentum, nesterov=config.nesterov),
                     optax.scale_by_learning_rate(learning_rate_schedule(config, steps_per_epoch)))
