"""Training dynamics against the PyTorch twin, compared in a way that can fail.

The JAX train step and TorchSEResNet start from the same weights (through the bridge), see the
same augmented batches, and train 20 steps with the published optimizer (SGD 0.1 / 0.9 / 5e-4,
clip_grad_value_, per-epoch CosineAnnealingLR) and BatchNorm in train mode. Two float32 programs
never agree bit for bit, and training amplifies any difference, so the parameter distance after
each step is judged against a control band measured in the same test: torch against itself after
a 1-ulp perturbation of its initial weights. A deliberately wrong twin (weight decay added before
clipping) falls outside the band.
"""
import functools

import jax
import numpy as np
import pytest

import input_pipeline
from flax_seresnet import optim, steps, train
from flax_seresnet.model import SEResNet
from tests.train_helpers import tiny_config

torch = pytest.importorskip('torch')
from flax_seresnet.reference import TorchSEResNet  # noqa: E402
from flax_seresnet.torch_bridge import load_torch_checkpoint, to_torch_state_dict  # noqa: E402

ARCH = dict(stage_blocks=(1, 1, 1), widths=(8, 16, 16))
EPOCHS, STEPS_PER_EPOCH, BATCH = 4, 5, 32
# Small enough that most gradient elements are clipped, so the order of clipping and weight decay
# shows (at the published 0.1 few elements of this tiny network's gradient reach the bound).
CLIP = 0.01


def jax_run(config, initial, data, key_data):
  """(losses, parameters and statistics after each step as torch state_dicts) of the library's
  train step."""
  model = SEResNet(**ARCH)
  variables = load_torch_checkpoint(initial, model)
  state = steps.TrainState.create(
      apply_fn=model.apply, params=variables['params'], batch_stats=variables['batch_stats'],
      tx=optim.make_optimizer(config, STEPS_PER_EPOCH))
  step = jax.jit(train.train_step_of(config))
  losses, states = [], []
  for epoch in range(EPOCHS):
    for indices in batches(epoch):
      state, sums = step(state, data, indices, key_data)
      losses.append(float(sums['loss_sum'] / sums['count']))
      states.append(to_torch_state_dict({'params': state.params,
                                         'batch_stats': state.batch_stats}))
  return losses, states


def augmented(data, indices, step, key_data):
  """The batch the JAX step draws at `step` (the same keys as steps.train_step), as NCHW."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
  augment_key, _ = jax.random.split(step_key)
  images = input_pipeline.augment(data['images'][indices],
                                  input_pipeline.example_keys(augment_key, indices))
  return torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())


def torch_run(initial, data, key_data, decay_before_clipping=False):
  """The published PyTorch recipe on the same batches; optionally the wrong twin that adds the
  weight decay to the gradient before clipping it."""
  net = TorchSEResNet(**ARCH)
  net.load_state_dict(initial)
  net.train()
  wd = 5e-4
  optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=0.0 if decay_before_clipping else wd)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS)
  losses, states, step = [], [], 0
  for epoch in range(EPOCHS):
    for indices in batches(epoch):
      images = augmented(data, indices, step, key_data)
      labels = torch.from_numpy(np.asarray(data['labels'][indices], np.int64))
      loss = torch.nn.functional.cross_entropy(net(images), labels)
      optimizer.zero_grad()
      loss.backward()
      if decay_before_clipping:
        for p in net.parameters():
          p.grad.add_(p.detach(), alpha=wd)
      torch.nn.utils.clip_grad_value_(net.parameters(), CLIP)
      optimizer.step()
      losses.append(float(loss.detach()))
      states.append({k: v.clone() for k, v in net.state_dict().items()})
      step += 1
    scheduler.step()
  return losses, states


def batches(epoch):
  return input_pipeline.BatchPlan(num_test=1, eval_batch_size=1, num_train=STEPS_PER_EPOCH * BATCH,
                                  batch_size=BATCH).train_batches(epoch)


def distance(a, b):
  """Relative L2 distance over all parameters and running statistics."""
  keys = [k for k in a if not k.endswith('num_batches_tracked')]
  diff = np.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in keys))
  return diff / np.sqrt(sum(float((b[k].double() ** 2).sum()) for k in keys))


@pytest.fixture(scope='module')
def runs():
  rng = np.random.default_rng(0)
  data = {'images': rng.integers(0, 256, (STEPS_PER_EPOCH * BATCH, 32, 32, 3), np.uint8),
          'labels': rng.integers(0, 10, STEPS_PER_EPOCH * BATCH).astype(np.int32)}
  key_data = jax.random.key_data(jax.random.key(7))
  torch.manual_seed(0)
  initial = TorchSEResNet(**ARCH).state_dict()
  perturbed = {k: torch.from_numpy(np.nextafter(v.numpy(), np.inf)) if v.is_floating_point()
               else v for k, v in initial.items()}
  config = tiny_config(num_epochs=EPOCHS, learning_rate=0.1, grad_clip_value=CLIP)
  return {'jax': jax_run(config, initial, data, key_data),
          'torch': torch_run(initial, data, key_data),
          'control': torch_run(perturbed, data, key_data),
          'wrong': torch_run(initial, data, key_data, decay_before_clipping=True)}


def test_the_losses_agree_over_the_first_steps(runs):
  np.testing.assert_allclose(runs['jax'][0][:5], runs['torch'][0][:5], rtol=1e-4)


def within_band(runs, name, factor=10.0):
  """Whether `name` stays within `factor` times the control band at every step. Training
  amplifies differences in jumps (a ReLU or a clip flips) whose timing varies by a step between
  processors, so the band at a step is the largest control distance up to the next step."""
  distances = [[distance(a, b) for a, b in zip(runs[other][1], runs['torch'][1])]
               for other in (name, 'control')]
  return all(d <= factor * max(distances[1][:t + 2]) for t, d in enumerate(distances[0]))


def test_the_parameters_stay_within_the_control_band(runs):
  assert within_band(runs, 'jax')
  assert not within_band(runs, 'wrong')  # the check can fail
