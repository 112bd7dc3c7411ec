"""The PyTorch side of the benchmarks: on-device augmentation, step throughput, the recipe loop.

All on the CPU with tiny sizes; the GPU numbers come from the benchmark scripts.
"""
import math
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip('torch')

# benchmarks/ is a folder of scripts, not an installed package: import it from the repo root.
_REPO = pathlib.Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

from benchmarks import torch_side  # noqa: E402
from input_pipeline.augment import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from input_pipeline.augment import apply_crop_flip as jax_apply_crop_flip  # noqa: E402
from input_pipeline.augment import normalize as jax_normalize  # noqa: E402
from input_pipeline.cifar10 import Cifar10  # noqa: E402

TINY_MODEL = dict(stage_blocks=(1, 1, 1), widths=(8, 16, 32))


def numpy_crop_flip(images_nchw, dy, dx, flip, padding=4, pad_mode='zeros'):
  """The plain definition: pad each image, slice the window, mirror it."""
  mode = 'constant' if pad_mode == 'zeros' else 'reflect'
  h, w = images_nchw.shape[2:]
  out = []
  for image, y, x, f in zip(images_nchw, dy, dx, flip):
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)), mode=mode)
    crop = padded[:, y:y + h, x:x + w]
    out.append(crop[:, :, ::-1] if f else crop)
  return np.stack(out)


def random_params(batch, seed=0, padding=4):
  rng = np.random.default_rng(seed)
  dy = rng.integers(0, 2 * padding + 1, batch)
  dx = rng.integers(0, 2 * padding + 1, batch)
  # Make sure the extremes (full padding on either side) are exercised.
  dy[:4], dx[:4] = [0, 2 * padding, 0, 2 * padding], [0, 0, 2 * padding, 2 * padding]
  flip = rng.integers(0, 2, batch).astype(bool)
  return dy, dx, flip


def random_images(batch, seed=0, shape=(3, 32, 32)):
  return np.random.default_rng(seed).integers(0, 256, (batch,) + shape, dtype=np.uint8)


@pytest.mark.parametrize('pad_mode', ['zeros', 'reflect'])
def test_crop_flip_matches_numpy(pad_mode):
  images = random_images(64)
  dy, dx, flip = random_params(64)
  got = torch_side.apply_crop_flip(torch.from_numpy(images), torch.from_numpy(dy),
                                   torch.from_numpy(dx), torch.from_numpy(flip), 4, pad_mode)
  assert got.dtype == torch.uint8 and got.is_contiguous()
  np.testing.assert_array_equal(got.numpy(), numpy_crop_flip(images, dy, dx, flip, 4, pad_mode))


def test_crop_flip_non_square_and_other_padding():
  images = random_images(16, shape=(2, 12, 20))
  dy, dx, flip = random_params(16, seed=1, padding=3)
  for pad_mode in ('zeros', 'reflect'):
    got = torch_side.apply_crop_flip(torch.from_numpy(images), torch.from_numpy(dy),
                                     torch.from_numpy(dx), torch.from_numpy(flip), 3, pad_mode)
    np.testing.assert_array_equal(got.numpy(),
                                  numpy_crop_flip(images, dy, dx, flip, 3, pad_mode))


@pytest.mark.parametrize('pad_mode', ['zeros', 'reflect'])
def test_torch_augment_given_params_matches_numpy_normalized(pad_mode):
  images = random_images(32, seed=2)
  dy, dx, flip = random_params(32, seed=3)
  params = tuple(torch.from_numpy(a) for a in (dy, dx, flip))
  got, used = torch_side.torch_augment(torch.from_numpy(images), None, pad_mode, params=params,
                                       return_params=True)
  assert used is params
  crops = numpy_crop_flip(images, dy, dx, flip, 4, pad_mode).astype(np.float32)
  mean = np.asarray(CIFAR10_MEAN, np.float32)[None, :, None, None]
  std = np.asarray(CIFAR10_STD, np.float32)[None, :, None, None]
  assert got.dtype == torch.float32
  np.testing.assert_allclose(got.numpy(), (crops / 255.0 - mean) / std, atol=1e-5)


@pytest.mark.parametrize('pad_mode', ['zeros', 'reflect'])
def test_torch_augment_matches_jax_augment(pad_mode):
  """The two frameworks' training transforms agree exactly for the same draws."""
  images = random_images(16, seed=4)
  dy, dx, flip = random_params(16, seed=5)
  got = torch_side.torch_augment(torch.from_numpy(images), None, pad_mode,
                                 params=tuple(torch.from_numpy(a) for a in (dy, dx, flip)))
  want = jax_normalize(jax_apply_crop_flip(images.transpose(0, 2, 3, 1), dy, dx, flip, 4,
                                           pad_mode))
  np.testing.assert_allclose(got.numpy(), np.asarray(want).transpose(0, 3, 1, 2), atol=1e-6)


def test_drawn_offsets_cover_range_and_flip_is_fair():
  gen = torch.Generator().manual_seed(0)
  images = torch.from_numpy(random_images(4096, seed=6))
  out, (dy, dx, flip) = torch_side.torch_augment(images, gen, return_params=True)
  assert out.shape == (4096, 3, 32, 32)
  for offsets in (dy, dx):
    assert sorted(offsets.unique().tolist()) == list(range(9))
  assert abs(flip.float().mean().item() - 0.5) < 0.03
  # The drawn params are the ones applied.
  again = torch_side.torch_augment(images, None, params=(dy, dx, flip))
  torch.testing.assert_close(out, again, rtol=0, atol=0)
  # The same seed draws the same augmentation.
  other = torch_side.torch_augment(images, torch.Generator().manual_seed(0))
  torch.testing.assert_close(out, other, rtol=0, atol=0)


def test_bad_pad_mode_is_refused():
  with pytest.raises(ValueError, match='pad_mode'):
    torch_side.torch_augment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                             torch.Generator(), 'edge')


def test_epoch_seeds_differ():
  seeds = {torch_side.epoch_seed(s, e) for s in range(3) for e in range(3)}
  assert len(seeds) == 9 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize('mode', ['eager_fp32', 'bf16_channels_last'])
def test_train_step_throughput_positive(mode):
  saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
  # The published network for the published step; a tiny one for bf16, whose CPU kernels can be
  # slow, since only the code path (channels_last, autocast) is under test there.
  kwargs = {} if mode == 'eager_fp32' else dict(model_kwargs=TINY_MODEL)
  rate = torch_side.torch_train_step_throughput(8, mode, 'cpu', warmup=1, steps=2, repeats=1,
                                                **kwargs)
  assert math.isfinite(rate) and rate > 0
  assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == saved


def test_train_step_throughput_refuses_unknown_mode():
  with pytest.raises(ValueError, match='mode'):
    torch_side.torch_train_step_throughput(8, 'fp16', 'cpu')


def fake_data(train=250, test=200, seed=0):
  rng = np.random.default_rng(seed)
  return Cifar10(rng.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, 10, train).astype(np.int32),
                 rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, 10, test).astype(np.int32))


def test_train_torch_reference_tiny_run():
  lines = []
  saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
           torch.backends.cudnn.benchmark)
  # 250 images at 64: 4 steps per epoch, the last one partial (58 images) and kept.
  result = torch_side.train_torch_reference(
      fake_data(), epochs=3, batch_size=64, device='cpu', eval_batch_size=64,
      model_kwargs=TINY_MODEL, progress=False, log=lines.append)
  assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
          torch.backends.cudnn.benchmark) == saved
  history = result['history']
  assert [r['epoch'] for r in history] == [1, 2, 3] and len(lines) == 3
  assert result['steps_per_epoch'] == 4 and result['device'] == 'cpu'
  for record in history:
    assert {'epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
            'epoch_train_s', 'img_per_s', 'learning_rate'} <= set(record)
    assert math.isfinite(record['train_loss']) and math.isfinite(record['test_loss'])
    assert 0 <= record['train_accuracy'] <= 100 and 0 <= record['test_accuracy'] <= 100
    # Accuracies are counts over 250 / 200 images, in percent.
    assert round(record['train_accuracy'] * 2.5) == pytest.approx(record['train_accuracy'] * 2.5)
    assert round(record['test_accuracy'] * 2) == pytest.approx(record['test_accuracy'] * 2)
    assert record['img_per_s'] == pytest.approx(250 / record['epoch_train_s'])
  # CosineAnnealingLR(T_max=3) stepped once per epoch: 0.1 * (1 + cos(pi * e / 3)) / 2.
  want = [0.05 * (1 + math.cos(math.pi * e / 3)) for e in range(3)]
  np.testing.assert_allclose([r['learning_rate'] for r in history], want, rtol=1e-6)
  assert result['final_test_accuracy'] == history[-1]['test_accuracy']
  assert result['best_test_accuracy'] == max(r['test_accuracy'] for r in history)
  train_only = sum(r['epoch_train_s'] for r in history)
  assert result['train_s'] >= train_only
  assert result['img_per_s'] == pytest.approx(3 * 250 / train_only)


def test_trainer_is_reproducible_and_seed_dependent():
  def run(seed):
    trainer = torch_side.TorchTrainer(fake_data(train=128, test=64), epochs=1, batch_size=64,
                                      device='cpu', seed=seed, model_kwargs=TINY_MODEL,
                                      progress=False, log=None, pad_mode='reflect')
    record = trainer.run()['history'][0]
    return record['train_loss'], record['test_loss']

  first = run(0)
  assert run(0) == first
  assert run(1) != first


def test_trainer_refuses_bad_data():
  data = fake_data()
  bad = data._replace(train_images=data.train_images.astype(np.float32))
  with pytest.raises(ValueError, match='train_images'):
    torch_side.TorchTrainer(bad, epochs=1, device='cpu', model_kwargs=TINY_MODEL)


def test_the_cosine_horizon_can_be_the_originals_200_epochs():
  trainer = torch_side.TorchTrainer(fake_data(train=64, test=64), epochs=2, cosine_epochs=200,
                                    batch_size=64, device='cpu', model_kwargs=TINY_MODEL,
                                    progress=False, log=None)
  history = trainer.run()['history']
  np.testing.assert_allclose([r['learning_rate'] for r in history],
                             [0.05 * (1 + math.cos(math.pi * e / 200)) for e in range(2)])


def test_welch_interval_matches_scipy_and_not_the_pooled_one():
  from scipy import stats
  from benchmarks import compare
  a, b = [94.1, 94.5, 93.9, 94.4], [93.2, 94.6, 92.8]  # unequal variances
  difference, low, high = compare.welch_interval(a, b)
  expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  np.testing.assert_allclose([low, high], [expected.low, expected.high], rtol=1e-9)
  assert difference == pytest.approx(np.mean(a) - np.mean(b))
  pooled = stats.ttest_ind(a, b, equal_var=True).confidence_interval(0.95)
  assert abs(pooled.low - low) > 0.01  # the check tells Welch's interval from Student's
  assert 'the same accuracy' in compare.verdict(-0.1, 0.2, 0.3)
  assert 'more seeds' in compare.verdict(-0.5, 0.2, 0.3)
  assert 'equivalent' in compare.verdict(0.05, 0.2, 0.3)
  assert 'JAX trains to a higher' in compare.verdict(0.5, 0.9, 0.3)


def test_compare_runs_the_protocol_end_to_end(learnable_cifar10_dir, tmp_path):
  from benchmarks import compare
  compare.main(['--epochs', '1', '--seeds', '2', '--small', '--workdir', str(tmp_path),
                '--data_dir', str(learnable_cifar10_dir), '--train_subset', '256'])
  report = (tmp_path / 'compare.md').read_text()
  assert report.count('| PyTorch |') == 3 and report.count('| JAX |') == 3  # 2 runs + mean
  assert '95% interval (Welch)' in report and 'Training time: PyTorch / JAX = ' in report
  result = __import__('json').loads((tmp_path / 'compare.json').read_text())
  assert [r['seed'] for r in result['runs']['jax']] == [0, 1]
  assert (tmp_path / 'compare.png').stat().st_size > 1000
