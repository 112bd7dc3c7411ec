"""Training state and the pure step functions: (state, batch, key) -> (state, metrics).

Nothing here knows about devices. `parallel.py` runs the same functions under jax.jit with a
sharded batch or under jax.pmap; under pmap, `axis_name` names the device axis so gradients
(and, optionally, BatchNorm statistics) are averaged over it.

Metrics are sums (loss_sum, correct, count), so that any number of steps, devices and hosts
combine into exact means.
"""
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import input_pipeline


class TrainState(train_state.TrainState):
  """Flax TrainState with BatchNorm statistics and an optional EMA of the parameters."""
  batch_stats: Any = None
  ema_params: Any = None  # None when config.ema_decay == 0


def create_train_state(model, tx: optax.GradientTransformation, key: jax.Array,
                       use_ema: bool = False) -> TrainState:
  variables = model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)
  params = variables['params']
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables['batch_stats'],
                           ema_params=jax.tree.map(jnp.copy, params) if use_ema else None)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """Per-example cross-entropy (torch.nn.CrossEntropyLoss(label_smoothing=...) semantics)."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _sum_over(metrics: Dict[str, jax.Array], axis_name: Optional[str]):
  return jax.lax.psum(metrics, axis_name) if axis_name else metrics


def train_step(state: TrainState, batch: Dict[str, jax.Array], key: jax.Array, *,
               augment_fn: Callable = input_pipeline.augment, label_smoothing: float = 0.0,
               ema_decay: float = 0.0, axis_name: Optional[str] = None):
  """One SGD step on a batch {'images': uint8 NHWC, 'labels': int, 'ids': dataset indices}.

  `key` is the run's base key; the step folds in its own step number, and each example folds
  in its dataset index (input_pipeline.example_keys), so the augmentation of an example does
  not depend on the batch layout over devices, and a resumed run draws what an uninterrupted
  one would.
  """
  step_key = jax.random.fold_in(key, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = augment_fn(batch['images'], input_pipeline.example_keys(augment_key, batch['ids']))
  labels = batch['labels']

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        mutable=['batch_stats'], rngs={'dropout': dropout_key})
    loss = jnp.mean(cross_entropy(logits, labels, label_smoothing))
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if axis_name:
    # Each device averaged over its slice; the mean of equal-sized slices is the global mean.
    grads = jax.lax.pmean(grads, axis_name)
    # With per-device BatchNorm (no axis in the model) the running statistics differ per
    # device; keep their average so every replica holds the same state.
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay:
    new_state = new_state.replace(ema_params=optax.incremental_update(
        new_state.params, state.ema_params, step_size=1.0 - ema_decay))
  count = jnp.asarray(labels.shape[0], jnp.float32)
  metrics = {'loss_sum': loss * count,
             'correct': jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
             'count': count}
  return new_state, _sum_over(metrics, axis_name)


def eval_variables(state: TrainState) -> Dict[str, Any]:
  """The variables evaluation uses: the EMA parameters when they are kept."""
  params = state.ema_params if state.ema_params is not None else state.params
  return {'params': params, 'batch_stats': state.batch_stats}


def predict_logits(apply_fn, variables, images_uint8: jax.Array, flip_tta: bool = False):
  """Logits for uint8 NHWC images: normalisation only, optionally averaged with the mirror."""
  images = input_pipeline.normalize(images_uint8)
  logits = apply_fn(variables, images, train=False)
  if flip_tta:
    logits = (logits + apply_fn(variables, images[:, :, ::-1, :], train=False)) / 2
  return logits


def eval_step(variables, batch: Dict[str, jax.Array], *, apply_fn, flip_tta: bool = False,
              axis_name: Optional[str] = None):
  """Masked sums over a padded test batch {'images', 'labels', 'mask'}."""
  logits = predict_logits(apply_fn, variables, batch['images'], flip_tta)
  mask = batch['mask'].astype(jnp.float32)
  loss = cross_entropy(logits, batch['labels'])
  correct = (jnp.argmax(logits, -1) == batch['labels']).astype(jnp.float32)
  metrics = {'loss_sum': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
             'count': jnp.sum(mask)}
  return _sum_over(metrics, axis_name)


def predict_step(variables, batch: Dict[str, jax.Array], *, apply_fn, flip_tta: bool = False):
  return jnp.argmax(predict_logits(apply_fn, variables, batch['images'], flip_tta), -1)
