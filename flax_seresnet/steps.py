"""The training state and the pure step functions. `parallel.py` places them under jax.jit with
a sharded batch (XLA adds the collectives) or under jax.pmap, where `axis_name` names the
device axis to average gradients and metrics over.

Metrics are sums (loss_sum, correct, count), so steps, devices and hosts combine into exact means.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import input_pipeline


class TrainState(train_state.TrainState):
  """Flax's TrainState with BatchNorm statistics and an optional EMA of the parameters."""
  batch_stats: Any = None
  ema_params: Any = None  # None unless config.ema_decay > 0


def create_train_state(model, tx, key, use_ema: bool = False) -> TrainState:
  variables = model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
  params = variables['params']
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables['batch_stats'],
                           ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)


def eval_variables(state) -> dict:
  """What evaluation uses: the EMA of the parameters when one is kept."""
  params = state.params if state.ema_params is None else state.ema_params
  return {'params': params, 'batch_stats': state.batch_stats}


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per example, as torch.nn.CrossEntropyLoss(label_smoothing=...)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _sums(loss, logits, labels, mask, axis_name):
  correct = jnp.argmax(logits, -1) == labels
  sums = {'loss_sum': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
  return jax.lax.psum(sums, axis_name) if axis_name else sums


def train_step(state: TrainState, data, indices, key_data, *,
               augment: Optional[Callable], label_smoothing: float = 0.0,
               ema_decay: float = 0.0, axis_name: Optional[str] = None):
  """One SGD step on the batch `indices` of the device-resident `data` {'images', 'labels'}.

  gather -> per-example keys -> augment (`augment(images, keys)`; None: normalise only) -> loss
  and gradients -> (average over devices) -> update. The keys fold in the step number and each
  example's dataset index, so a resumed run draws what an uninterrupted one would, however the
  batch is split over devices. `key_data` is the run's raw key (typed keys cannot be donated or
  replicated everywhere).
  """
  images, labels = data['images'][indices], data['labels'][indices]
  step_key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  if augment is None:
    images = input_pipeline.normalize(images)
  else:
    images = augment(images, input_pipeline.example_keys(augment_key, indices))

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    loss = cross_entropy(logits, labels, label_smoothing)
    return jnp.mean(loss), (loss, logits, updates['batch_stats'])

  grads, (loss, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  if axis_name:
    # Equal-sized slices: the mean of the devices' means is the global mean. Per-device
    # BatchNorm statistics (DataParallel-like) are averaged so every replica holds one state.
    grads, batch_stats = jax.lax.pmean((grads, batch_stats), axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    new_state = new_state.replace(ema_params=optax.incremental_update(
        new_state.params, state.ema_params, step_size=1.0 - ema_decay))
  return new_state, _sums(loss, logits, labels, jnp.ones_like(loss), axis_name)


def predict_logits(apply_fn, variables, images_uint8, flip_tta: bool = False):
  """Logits of uint8 NHWC images: normalisation only, optionally averaged with the mirror."""
  images = input_pipeline.normalize(images_uint8)
  logits = apply_fn(variables, images, train=False)
  if flip_tta:
    logits = (logits + apply_fn(variables, images[:, :, ::-1, :], train=False)) / 2
  return logits


def eval_step(variables, data, indices, mask, *, apply_fn, flip_tta: bool = False,
              axis_name: Optional[str] = None):
  """Metric sums over the examples of the batch `indices` of `data` where `mask` (padding
  examples, mask False, count nowhere)."""
  labels = data['labels'][indices]
  logits = predict_logits(apply_fn, variables, data['images'][indices], flip_tta)
  return _sums(cross_entropy(logits, labels), logits, labels, mask.astype(jnp.float32),
               axis_name)


def predict_step(variables, images, indices, *, apply_fn, flip_tta: bool = False,
                 axis_name: Optional[str] = None):
  """Class probabilities of the images `indices` of the device-resident `images`, the whole
  batch on every device."""
  probabilities = jax.nn.softmax(predict_logits(apply_fn, variables, images[indices], flip_tta))
  return jax.lax.all_gather(probabilities, axis_name, tiled=True) if axis_name else probabilities
