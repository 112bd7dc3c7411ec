"""Parity with the PyTorch reference and the weight bridge in both directions."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from flax import linen as nn  # noqa: E402

from flax_seresnet import SEResNet  # noqa: E402
from flax_seresnet.errors import CheckpointError  # noqa: E402
from flax_seresnet.model import BatchNorm  # noqa: E402
from flax_seresnet.reference import TorchSEResNet  # noqa: E402
from flax_seresnet.torch_bridge import (infer_model_config, load_torch_checkpoint,  # noqa: E402
                                        read_state_dict, to_torch_state_dict)

ORIGINAL_KEYS = ['conv1.weight', 'bn1.running_var', 'seblock.conv1.weight', 'seblock.conv2.bias',
                 'residual_layers.0.0.conv1.weight', 'residual_layers.2.2.bn2.bias',
                 'residual_layers.1.0.shortcut.0.weight',
                 'residual_layers.1.0.shortcut.1.running_mean', 'linear.weight', 'linear.bias']


def randomised_reference(seed=0, **options):
  """A TorchSEResNet with random weights AND random, non-trivial BatchNorm statistics."""
  torch.manual_seed(seed)
  net = TorchSEResNet(**options)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
        module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
        module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
  return net


def images(n=8, seed=0):
  return np.random.RandomState(seed).randn(n, 3, 32, 32).astype(np.float32)


def nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def test_reference_has_the_original_module_names_and_size():
  net = TorchSEResNet()
  keys = set(net.state_dict())
  assert set(ORIGINAL_KEYS) <= keys
  assert sum(p.numel() for p in net.parameters()) == 4_697_742


@pytest.mark.parametrize('options', [{}, dict(se_position='blocks', stage_blocks=(2, 1, 1)),
                                     dict(preact=True, stage_blocks=(1, 2, 1)),
                                     dict(kernel_sizes=(5, 3, 3), shortcut_kernel_sizes=(1, 3, 3),
                                          stage_blocks=(1, 1, 1)),
                                     dict(avg_pool_kernel_size=4, stage_blocks=(1, 1, 1)),
                                     dict(avg_pool_kernel_size=2, stage_blocks=(1, 1, 2),
                                          preact=True),
                                     dict(avg_pool_kernel_size=1, stage_blocks=(1, 1),
                                          widths=(16, 32), kernel_sizes=(3, 3),
                                          shortcut_kernel_sizes=(1, 1))])
def test_eval_logits_match_pytorch(options):
  net = randomised_reference(**options).eval()
  x = images()
  with torch.no_grad():
    expected = net(torch.from_numpy(x)).numpy()
  variables = load_torch_checkpoint(net.state_dict())
  model = SEResNet(**infer_model_config(net.state_dict()))
  assert model == SEResNet(**options)
  got = np.asarray(model.apply(variables, nhwc(x), train=False))
  assert np.abs(got - expected).max() <= 1e-4
  assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero numbers


def test_train_logits_and_running_statistics_match_pytorch():
  net = randomised_reference().train()
  variables = load_torch_checkpoint(net.state_dict())
  x = images(16, seed=3)
  expected = net(torch.from_numpy(x)).detach().numpy()  # updates torch's running statistics
  logits, updates = SEResNet().apply(variables, nhwc(x), train=True, mutable=['batch_stats'])
  assert np.abs(np.asarray(logits) - expected).max() <= 1e-4
  # Running statistics move the way torch moves them (unbiased variance, momentum 0.1).
  after = load_torch_checkpoint(net.state_dict())['batch_stats']
  chex.assert_trees_all_close(updates['batch_stats'], after, atol=1e-4, rtol=1e-4)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), after,
                       variables['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0


class FixedMasks:
  """The i-th dropout call, on either side, multiplies by mask i (drawn in NCHW layout)."""

  def __init__(self, rate, identity_sites=()):
    self.rate, self.identity_sites, self.calls = rate, identity_sites, itertools.count()

  def __call__(self, shape_nchw):
    i = next(self.calls)
    if i in self.identity_sites:
      return np.ones(shape_nchw, np.float32)
    keep = np.random.RandomState(i).rand(*shape_nchw) >= self.rate
    return (keep / (1 - self.rate)).astype(np.float32)


def torch_logits_with_masks(net, x, masks):
  hooks = [m.register_forward_hook(lambda m, inp, out: inp[0] * torch.from_numpy(
      masks(tuple(inp[0].shape)))) for m in net.modules() if isinstance(m, torch.nn.Dropout)]
  logits = net(torch.from_numpy(x)).detach().numpy()
  for hook in hooks:
    hook.remove()
  return logits


def flax_logits_with_masks(model, variables, x, masks):
  def interceptor(next_fun, args, kwargs, context):
    if not (isinstance(context.module, nn.Dropout) and context.method_name == '__call__'):
      return next_fun(*args, **kwargs)
    y = args[0]
    nchw = (y.shape[0], y.shape[-1]) + y.shape[1:-1]
    mask = masks(nchw)
    return y * (mask.transpose(0, 2, 3, 1) if mask.ndim == 4 else mask)

  with nn.intercept_methods(interceptor):
    logits, _ = model.apply(variables, nhwc(x), train=True, mutable=['batch_stats'])
  return np.asarray(logits)


@pytest.mark.parametrize('preact', [False, True])
def test_dropout_sites_match_pytorch_under_the_same_masks(preact):
  # The original drops after every residual block and before the classifier.
  options = dict(stage_blocks=(2, 1, 1), widths=(16, 32, 64), dropout=0.3, preact=preact)
  net = randomised_reference(**options).train()
  variables = load_torch_checkpoint(net.state_dict())
  x = images(8, seed=5)
  torch_masks, flax_masks = FixedMasks(0.3), FixedMasks(0.3)
  expected = torch_logits_with_masks(net, x, torch_masks)
  got = flax_logits_with_masks(SEResNet(**options), variables, x, flax_masks)
  assert next(torch_masks.calls) == next(flax_masks.calls) == 4 + 1  # 4 blocks + classifier
  assert np.abs(got - expected).max() <= 1e-4
  # Control: dropout before the classifier only (the old placement) fails the comparison.
  only_last = torch_logits_with_masks(net, x, FixedMasks(0.3, identity_sites=range(4)))
  assert np.abs(got - only_last).max() > 1e-2


def test_batchnorm_far_from_zero_matches_pytorch():
  """|mean| / std = 3000: E[x^2] - E[x]^2 in float32 loses the variance entirely."""
  x = (300 + 0.1 * np.random.RandomState(0).randn(8, 4, 6, 6)).astype(np.float32)
  torch_bn = torch.nn.BatchNorm2d(4, momentum=1.0)  # running_var = this batch's unbiased var
  expected = torch_bn(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
  expected_var = torch_bn.running_var.numpy()
  bn = BatchNorm(momentum=0.0)
  variables = bn.init(jax.random.key(0), nhwc(x), train=False)
  y, updates = bn.apply(variables, nhwc(x), train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(y, expected, atol=5e-3)
  np.testing.assert_allclose(updates['batch_stats']['var'], expected_var, rtol=1e-3)
  # Control: the one-pass formula fails both checks at this input.
  mean = jnp.mean(nhwc(x), (0, 1, 2))
  one_pass = jnp.maximum(jnp.mean(jnp.square(nhwc(x)), (0, 1, 2)) - jnp.square(mean), 0.0)
  assert np.abs((nhwc(x) - mean) * jax.lax.rsqrt(one_pass + 1e-5) - expected).max() > 0.5
  n = x.size // 4
  assert np.abs(one_pass * n / (n - 1) / expected_var - 1).max() > 0.1


def test_original_checkpoint_dict_file_round_trip(tmp_path):
  net = randomised_reference(seed=4)
  original = {'net': {f'module.{k}': v for k, v in net.state_dict().items()},
              'acc': 95.1, 'epoch': 199, 'config': {'lr': 0.1, 'optimizer': 'sgd'}}
  path = tmp_path / 'ckpt.pth'
  torch.save(original, path)
  from_file = load_torch_checkpoint(path)
  from_dict = load_torch_checkpoint(original)
  chex.assert_trees_all_equal(from_file, from_dict)
  # Export then import is exact.
  exported = to_torch_state_dict(from_file)
  for key, value in net.state_dict().items():
    assert torch.equal(exported[key].to(value.dtype), value) or key.endswith('num_batches_tracked')
  chex.assert_trees_all_equal(load_torch_checkpoint(exported), from_file)
  twin = TorchSEResNet()
  twin.load_state_dict(exported)  # strict: same keys, same shapes


def test_loading_never_runs_code(tmp_path):
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      import os
      return (os.system, (f'touch {marker}',))

  path = tmp_path / 'evil.pth'
  torch.save({'net': {'conv1.weight': torch.zeros(1)}, 'payload': Evil()}, path)
  with pytest.raises(CheckpointError, match='evil.pth'):
    load_torch_checkpoint(path)
  assert not marker.exists()


def test_mismatched_checkpoints_name_the_first_offending_key():
  sd = dict(randomised_reference().state_dict())
  missing = {k: v for k, v in sd.items() if k != 'residual_layers.0.1.bn1.weight'}
  with pytest.raises(CheckpointError,
                     match=r"missing 'residual_layers.0.1.bn1.weight' \(expected shape \(64,\)\)"):
    load_torch_checkpoint(missing, model=SEResNet())
  extra = dict(sd, **{'extra.weight': torch.zeros(3)})
  with pytest.raises(CheckpointError, match="'extra.weight'"):
    load_torch_checkpoint(extra)
  misshapen = dict(sd, **{'linear.weight': torch.zeros(10, 128)})
  with pytest.raises(CheckpointError,
                     match=r"'linear.weight' has shape \(10, 128\), expected \(10, 256\)"):
    load_torch_checkpoint(misshapen, model=SEResNet())
  other = TorchSEResNet(stage_blocks=(2, 2, 2)).state_dict()
  with pytest.raises(CheckpointError, match='residual_layers.0.2'):
    load_torch_checkpoint(other, model=SEResNet())
  with pytest.raises(CheckpointError, match='SE-ResNet'):
    load_torch_checkpoint({'fc.weight': torch.zeros(2, 2)})


def tiny_state_dict():
  return dict(TorchSEResNet(stage_blocks=(1, 1, 1), widths=(8, 16, 16)).state_dict())


def renumbered(sd, stage_from):
  return {k.replace(f'residual_layers.{k.split(".")[1]}.',
                    f'residual_layers.{int(k.split(".")[1]) + stage_from}.')
          if k.startswith('residual_layers.') else k: v for k, v in sd.items()}


@pytest.mark.parametrize('damage,message', [
    (lambda sd: {**sd, 3: torch.zeros(1)}, "the key 3, not a name"),
    (lambda sd: renumbered(sd, 1), 'with stages 0..N-1'),
    (lambda sd: {**sd, 'linear.weight': torch.zeros(160)}, "'linear.weight' has shape (160,)"),
    (lambda sd: {**sd, 'residual_layers.0.0.conv1.weight': torch.zeros(0, 8, 3, 3)},
     'expected 4 non-zero dimensions'),
    (lambda sd: {**sd, 'seblock.conv1.weight': torch.zeros(8)}, "'seblock.conv1.weight' has shape"),
    (lambda sd: {**sd, 'linear.bias': [1.0, [2.0, 3.0]]}, "'linear.bias' holds a list"),
    (lambda sd: {**sd, 'linear.bias': sd['linear.bias'].to(torch.int32)}, 'holds int32 values'),
    (lambda sd: {**sd, 'linear.bias': sd['linear.bias'].to(torch.complex64)},
     'holds complex64 values'),
    (lambda sd: {k: v for k, v in sd.items() if not k.startswith('linear.')}, 'not an SE-ResNet'),
    (lambda sd: {**sd, 'linear.weight': torch.zeros(5, 16), 'linear.bias': torch.zeros(5)},
     'num_classes=5 must be >= 10'),
])
def test_a_malformed_state_dict_is_one_clear_error(damage, message):
  with pytest.raises(CheckpointError) as raised:
    load_torch_checkpoint(damage(tiny_state_dict()))
  assert message in str(raised.value) and '\n' not in str(raised.value), str(raised.value)


def test_a_legacy_non_zip_file_loads(tmp_path):
  sd = tiny_state_dict()
  torch.save({'net': sd, 'acc': 1.0}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  variables = load_torch_checkpoint(tmp_path / 'legacy.pth')
  np.testing.assert_array_equal(variables['params']['linear']['bias'], sd['linear.bias'].numpy())


@pytest.mark.parametrize('value,classes,message', [
    (float('nan'), 10, 'holds NaN or infinite weights'),
    (float('inf'), 10, 'holds NaN or infinite weights'),
    (0.0, 100, 'has 100 classes; CIFAR-10 has 10'),
])
def test_inference_refuses_non_finite_weights_and_other_class_counts(tmp_path, value, classes,
                                                                     message):
  from flax_seresnet import inference
  from tests.train_helpers import tiny_config
  sd = dict(TorchSEResNet(stage_blocks=(1, 1, 1), widths=(8, 16, 16),
                          num_classes=classes).state_dict())
  sd['linear.bias'] = sd['linear.bias'] + value
  torch.save({'net': sd}, tmp_path / 'model.pth')
  with pytest.raises(CheckpointError, match=message):
    inference.load_model(tiny_config(), torch_checkpoint=str(tmp_path / 'model.pth'))


def test_explicit_model_config_dict():
  net = randomised_reference(stage_blocks=(1, 1, 1), widths=(16, 32, 64))
  variables = load_torch_checkpoint(net.state_dict(),
                                    model={'stage_blocks': (1, 1, 1), 'widths': (16, 32, 64)})
  assert variables['params']['linear']['kernel'].shape == (64, 10)


@pytest.mark.parametrize('numpy_names', ['numpy._core', 'numpy.core'])
def test_the_originals_checkpoint_evaluates_through_the_cli(learnable_cifar10_dir, tmp_path,
                                                           numpy_names):
  """A file written as the original script writes it (DataParallel keys, float acc, int epoch,
  a config holding numpy scalars, under numpy 2.x's or 1.x's module names) gives the torch
  twin's logits, and `main.py --mode eval --torch_checkpoint` its accuracy."""
  import io
  import os
  import subprocess
  import sys
  import zipfile
  from tests.train_helpers import REPO, tiny_config
  import input_pipeline
  net = randomised_reference(seed=5, stage_blocks=(1, 1, 1), widths=(8, 16, 16)).eval()
  buffer = io.BytesIO()
  torch.save({'net': {f'module.{k}': v for k, v in net.state_dict().items()}, 'acc': 12.5,
              'epoch': 3, 'config': {'lr': 0.1, 'total_params': np.int64(12345),
                                     'drop': np.float64(0.0)}}, buffer)
  path = tmp_path / 'ckpt.pth'
  with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, 'w') as dst:
    for item in src.infolist():  # the same file, with numpy 1.x's module names if asked
      data = src.read(item)
      if item.filename.endswith('data.pkl'):
        data = data.replace(b'numpy._core.multiarray', f'{numpy_names}.multiarray'.encode())
      dst.writestr(item, data)
  config = tiny_config(learnable_cifar10_dir)
  data = input_pipeline.load_dataset(config)
  x = np.asarray(input_pipeline.normalize(data.test_images))
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  variables = load_torch_checkpoint(path)
  got = np.asarray(SEResNet(**infer_model_config(read_state_dict(path))).apply(
      variables, jnp.asarray(x), train=False))
  assert np.abs(got - expected).max() <= 1e-4 and np.abs(expected).max() > 0.1
  if numpy_names == 'numpy.core':
    return  # the command line reads the file through the same loader: one run of it suffices
  result = subprocess.run(
      [sys.executable, str(REPO / 'main.py'), '--config', 'configs/smoke.py', '--mode=eval',
       f'--torch_checkpoint={path}', f'--config.data_dir={learnable_cifar10_dir}',
       '--config.eval_batch_size=64', '--config.train_subset=0'], capture_output=True, text=True,
      cwd=REPO, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  accuracy = 100 * np.mean(expected.argmax(1) == data.test_labels)
  assert result.stdout == f'test_accuracy={accuracy:.2f}\n'  # the result alone on stdout
