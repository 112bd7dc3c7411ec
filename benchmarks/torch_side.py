"""The PyTorch side of the benchmarks: the published recipe, measured fairly.

Two measurements of the reference network (`flax_seresnet.reference.TorchSEResNet`):

* `torch_train_step_throughput`: images/s of one training step on synthetic
  data already on the device, in three modes (the published eager fp32 step;
  bf16 autocast + channels_last; the same under torch.compile).
* `train_torch_reference` / `TorchTrainer`: the published training recipe end
  to end (SGD 0.1/0.9/5e-4, per-epoch cosine, clip_grad_value_ 0.1, batch 128
  with the last partial batch kept, fp32, eager), but with the whole dataset
  held on the device as uint8 and augmented there (`torch_augment`). The
  published code fed the GPU from a torchvision DataLoader; holding the data
  on the device removes the host from the loop, as the JAX trainer does, so
  a side-by-side comparison measures the frameworks, not the data loaders.

fp32 means fp32: TF32 is off unless `allow_tf32=True`. PyTorch lets cuDNN use
TF32 for convolutions by default on Ampere and later GPUs, but the published
run used a Quadro RTX 8000 (Turing), which has no TF32, so its numbers are
true fp32 arithmetic. The global backend flags are restored on return.

Works with torch 2.4 and later on CPU or CUDA. Importing this module imports
`flax_seresnet` and `input_pipeline`, hence jax, but touches no jax device.
"""
import contextlib
import math
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from flax_seresnet.reference import TorchSEResNet
from input_pipeline.augment import CIFAR10_MEAN, CIFAR10_STD, PAD_MODES
from input_pipeline.cifar10 import Cifar10

MODES = ('eager_fp32', 'bf16_channels_last', 'compile_bf16_channels_last')

# The published recipe.
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
CLIP_VALUE = 0.1


# ----------------------------------------------------------------------------
# Backend settings.


@contextlib.contextmanager
def backend_settings(device: torch.device, allow_tf32: bool = False) -> Iterator[None]:
  """Sets TF32 and cudnn.benchmark for a measurement; restores them after.

  Args:
    device: the device the measurement runs on; cudnn.benchmark is turned on
      only for CUDA (it autotunes convolution algorithms for fixed shapes).
    allow_tf32: whether matmuls and cuDNN convolutions may use TF32. The
      published run had none (RTX 8000), so the default is False.

  Yields:
    Nothing; the settings hold inside the `with` block.
  """
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.backends.cudnn.benchmark)
  # The legacy flags exist in every torch from 2.4 to 2.13 (newer releases
  # add `fp32_precision` but still honour these).
  torch.backends.cuda.matmul.allow_tf32 = allow_tf32
  torch.backends.cudnn.allow_tf32 = allow_tf32
  if device.type == 'cuda':
    torch.backends.cudnn.benchmark = True
  try:
    yield
  finally:
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark) = saved


def synchronize(device: torch.device) -> None:
  """Waits for the device's queued work, so wall-clock times are true."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
  """The GPU's name (e.g. 'NVIDIA H100 80GB HBM3'), or 'cpu'."""
  if device.type == 'cuda':
    return torch.cuda.get_device_name(device)
  return device.type


def _make_model(model_kwargs: Optional[Mapping[str, Any]], seed: int) -> TorchSEResNet:
  """The reference network (published config unless overridden), seeded init on the CPU.

  Initializing on the CPU makes the starting weights the same on every device.
  """
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    return TorchSEResNet(**dict(model_kwargs or {}))


def _sgd(model: nn.Module, lr: float, momentum: float,
         weight_decay: float) -> torch.optim.SGD:
  # Weight decay on every parameter (BN and biases included), as published.
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


# ----------------------------------------------------------------------------
# Train-step throughput on synthetic data.


def torch_train_step_throughput(batch_size: int,
                                mode: str,
                                device: str,
                                *,
                                warmup: int = 10,
                                steps: int = 30,
                                repeats: int = 3,
                                allow_tf32: bool = False,
                                model_kwargs: Optional[Mapping[str, Any]] = None,
                                seed: int = 0) -> float:
  """Images/s of the reference's training step on synthetic on-device data.

  The step is the published one: model.train(); zero_grad; cross-entropy;
  backward; clip_grad_value_(0.1); SGD(0.1, momentum 0.9, wd 5e-4) step.

  Args:
    batch_size: images per step.
    mode: 'eager_fp32' (the published step), 'bf16_channels_last' (model and
      input channels_last, forward and loss under bf16 autocast) or
      'compile_bf16_channels_last' (the same through torch.compile, default
      mode; compilation happens in the warm-up steps, so give it some).
    device: a torch device string: 'cuda', 'cuda:0', 'cpu'.
    warmup: untimed steps first (cuDNN autotuning, allocator, compilation).
    steps: steps per timed window.
    repeats: timed windows; the median is reported.
    allow_tf32: let fp32 matmuls/convolutions use TF32 (off: true fp32).
    model_kwargs: `TorchSEResNet` options; the published network if None.
    seed: seeds the weights and the synthetic batch.

  Returns:
    batch_size * steps / (median window seconds).

  Raises:
    ValueError: unknown mode or non-positive counts.
  """
  if mode not in MODES:
    raise ValueError(f'mode is {mode!r}; use one of {MODES}')
  if batch_size < 1 or steps < 1 or repeats < 1 or warmup < 0:
    raise ValueError(f'batch_size={batch_size}, steps={steps}, repeats={repeats} must be >= 1 '
                     f'and warmup={warmup} >= 0')
  dev = torch.device(device)
  channels_last = mode != 'eager_fp32'
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  with backend_settings(dev, allow_tf32):
    model = _make_model(model_kwargs, seed).to(dev, memory_format=memory_format)
    optimizer = _sgd(model, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY)
    forward = torch.compile(model) if mode == 'compile_bf16_channels_last' else model
    gen = torch.Generator(device=dev).manual_seed(seed)
    # Synthetic inputs shaped like normalized CIFAR images: the step's cost
    # does not depend on the pixel values.
    x = torch.randn(batch_size, 3, 32, 32, generator=gen, device=dev)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,), generator=gen, device=dev)
    autocast = ((lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if channels_last else
                contextlib.nullcontext)

    def step():
      model.train()
      optimizer.zero_grad()
      with autocast():
        loss = F.cross_entropy(forward(x), y)
      loss.backward()
      nn.utils.clip_grad_value_(model.parameters(), CLIP_VALUE)
      optimizer.step()

    for _ in range(warmup):
      step()
    synchronize(dev)
    windows = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(steps):
        step()
      synchronize(dev)
      windows.append(time.perf_counter() - t0)
  return batch_size * steps / statistics.median(windows)


# ----------------------------------------------------------------------------
# Augmentation on the device.


def draw_crop_flip(batch: int,
                   generator: torch.Generator,
                   padding: int = 4,
                   device: Optional[torch.device] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """Draws per-example crop offsets and flips on `generator`'s device.

  Args:
    batch: number of examples.
    generator: a torch.Generator on the device the tensors should live on.
    padding: offsets are uniform in 0..2 * padding.
    device: defaults to the generator's device.

  Returns:
    (dy, dx, flip): int64 (B,) row/column offsets into the padded image and
    bool (B,) whether to mirror left-right (probability 0.5).
  """
  device = generator.device if device is None else device
  offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=device)
  flip = torch.randint(0, 2, (batch,), generator=generator, device=device).bool()
  return offsets[0], offsets[1], flip


def apply_crop_flip(images: torch.Tensor,
                    dy: torch.Tensor,
                    dx: torch.Tensor,
                    flip: torch.Tensor,
                    padding: int = 4,
                    pad_mode: str = 'zeros') -> torch.Tensor:
  """Pads by `padding`, crops at (dy, dx), mirrors where `flip`; NCHW, dtype kept.

  The same semantics as `input_pipeline.augment.apply_crop_flip` (which is
  NHWC): pad with zeros or reflect (no edge repeat), take the H x W window at
  (dy, dx) of the padded image, then mirror the window left-right.

  Nothing is padded in memory: each output pixel's source in the unpadded
  image is computed (reflected or masked at the borders), and one batched
  gather fetches all of them. No per-image Python loop, a handful of kernels.

  Args:
    images: (B, C, H, W) images, usually uint8, on any device.
    dy, dx: int (B,) offsets in 0..2 * padding.
    flip: bool (B,).
    padding: pixels of padding on each side.
    pad_mode: 'zeros' (the published code) or 'reflect' (the paper's text).

  Returns:
    (B, C, H, W) contiguous images of the input's dtype.
  """
  if pad_mode not in PAD_MODES:
    raise ValueError(f'pad_mode is {pad_mode!r}; use one of {PAD_MODES}')
  b, c, h, w = images.shape
  if padding >= min(h, w):
    raise ValueError(f'padding {padding} must be smaller than the image ({h}x{w})')
  device = images.device
  dy = dy.to(device=device, dtype=torch.long)
  dx = dx.to(device=device, dtype=torch.long)
  flip = flip.to(device=device, dtype=torch.bool)
  rows = dy[:, None] + torch.arange(h, device=device) - padding  # (B, H), unpadded coordinates
  out_cols = torch.arange(w, device=device)
  # Mirroring the crop reads its columns right to left.
  cols = dx[:, None] + torch.where(flip[:, None], w - 1 - out_cols, out_cols) - padding  # (B, W)
  if pad_mode == 'reflect':
    # jnp.pad / torch 'reflect': -1 -> 1, h -> h - 2 (one bounce suffices as padding < size).
    rows = torch.where(rows < 0, -rows, rows)
    rows = torch.where(rows > h - 1, 2 * (h - 1) - rows, rows)
    cols = torch.where(cols < 0, -cols, cols)
    cols = torch.where(cols > w - 1, 2 * (w - 1) - cols, cols)
    inside = None
  else:
    inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    rows = rows.clamp(0, h - 1)
    cols = cols.clamp(0, w - 1)
  index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
  out = torch.gather(images.reshape(b, c, h * w), 2, index).view(b, c, h, w)
  if inside is not None:
    out = out.masked_fill(~inside[:, None], 0)  # zero padding: pixels from outside become 0
  return out


def normalize(images: torch.Tensor,
              mean: Tuple[float, ...] = CIFAR10_MEAN,
              std: Tuple[float, ...] = CIFAR10_STD) -> torch.Tensor:
  """uint8 NCHW (0..255) -> float32 ((x / 255 - mean) / std), as the JAX side computes it."""
  mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device)
  std_t = torch.tensor(std, dtype=torch.float32, device=images.device)
  # x * (1 / (255 std)) - mean / std: the same fused form as input_pipeline.augment.normalize.
  scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
  offset = (-mean_t / std_t).view(1, -1, 1, 1)
  return images.float() * scale + offset


def torch_augment(images_uint8_nchw: torch.Tensor,
                  generator: Optional[torch.Generator],
                  pad_mode: str = 'zeros',
                  *,
                  padding: int = 4,
                  params: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
                  return_params: bool = False):
  """The published training transform on the device: random crop, flip, normalize.

  Args:
    images_uint8_nchw: (B, 3, 32, 32) uint8 images on the device.
    generator: a torch.Generator on the images' device; draws the crop
      offsets and flips (see `draw_crop_flip`). Unused when `params` is given.
    pad_mode: 'zeros' (the published code) or 'reflect'.
    padding: pixels of padding per side.
    params: (dy, dx, flip) to use instead of drawing them (for tests).
    return_params: also return the (dy, dx, flip) used.

  Returns:
    float32 (B, 3, 32, 32) normalized images; with `return_params`, the
    tuple (images, (dy, dx, flip)).
  """
  if params is None:
    if generator is None:
      raise ValueError('torch_augment needs a generator or explicit params=(dy, dx, flip)')
    params = draw_crop_flip(len(images_uint8_nchw), generator, padding, images_uint8_nchw.device)
  out = normalize(apply_crop_flip(images_uint8_nchw, *params, padding=padding, pad_mode=pad_mode))
  return (out, params) if return_params else out


# ----------------------------------------------------------------------------
# The published training recipe, data on the device.


def epoch_seed(seed: int, epoch: int) -> int:
  """A well-mixed 63-bit generator seed for (seed, epoch).

  Distinct epochs get unrelated streams (not seed + epoch, which would make
  run (seed=0, epoch=1) repeat run (seed=1, epoch=0)).
  """
  return int(np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TorchTrainer:
  """The published PyTorch recipe with the dataset and augmentation on the device.

  SGD(lr, momentum, weight_decay) on all parameters; CosineAnnealingLR
  (T_max=cosine_epochs or epochs) stepped once per epoch; clip_grad_value_ before each step;
  cross-entropy; fp32 eager; batches of `batch_size` with the last partial
  batch kept (391 steps per epoch for 50,000 images at 128). Each epoch's
  shuffle, crops and flips come from one torch.Generator on the device seeded
  from (seed, epoch), so a run is reproducible on a given device type.

  Typical use: `TorchTrainer(data, epochs=40, device='cuda').run()`; or call
  `train_epoch` / `evaluate` yourself. `model` holds the trained network.
  """

  def __init__(self,
               data: Cifar10,
               *,
               epochs: int,
               device: str,
               cosine_epochs: int = 0,
               batch_size: int = 128,
               lr: float = LEARNING_RATE,
               momentum: float = MOMENTUM,
               weight_decay: float = WEIGHT_DECAY,
               clip_value: Optional[float] = CLIP_VALUE,
               seed: int = 0,
               eval_batch_size: int = 1000,
               pad_mode: str = 'zeros',
               allow_tf32: bool = False,
               model_kwargs: Optional[Mapping[str, Any]] = None,
               progress: bool = True,
               log: Optional[Callable[[str], None]] = print):
    """Builds the model and optimizer and copies the dataset to the device.

    Args:
      data: the `input_pipeline.Cifar10` arrays (uint8 NHWC, int labels).
      epochs: epochs to train.
      device: torch device string ('cuda', 'cuda:1', 'cpu').
      cosine_epochs: the cosine's T_max; 0: `epochs`. The original hard-codes 200 whatever
        the number of epochs (the same as `epochs` for its 200-epoch run).
      batch_size: training batch; the last partial batch is kept.
      lr, momentum, weight_decay: SGD settings (coupled weight decay).
      clip_value: per-element gradient clip (clip_grad_value_); None: none.
      seed: seeds the weights and every epoch's shuffle and augmentation.
      eval_batch_size: test-set batch size (does not change the result).
      pad_mode: crop padding, 'zeros' (the published code) or 'reflect'.
      allow_tf32: let cuDNN/cuBLAS use TF32 (default off: true fp32).
      model_kwargs: `TorchSEResNet` options; the published network if None.
      progress: show a tqdm bar per epoch.
      log: called with one line per epoch; None for silence.
    """
    if epochs < 1 or batch_size < 1 or eval_batch_size < 1:
      raise ValueError(f'epochs={epochs}, batch_size={batch_size} and '
                       f'eval_batch_size={eval_batch_size} must all be >= 1')
    if pad_mode not in PAD_MODES:
      raise ValueError(f'pad_mode is {pad_mode!r}; use one of {PAD_MODES}')
    for name in ('train', 'test'):
      images = getattr(data, f'{name}_images')
      labels = getattr(data, f'{name}_labels')
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f'data.{name}_images has shape {images.shape} and dtype {images.dtype}; '
                         'expected uint8 NHWC (N, 32, 32, 3) as load_cifar10 returns')
      if len(labels) != len(images) or len(images) == 0:
        raise ValueError(f'data.{name}_images holds {len(images)} images and data.{name}_labels '
                         f'{len(labels)} labels; expected the same, non-zero number')
    self.epochs = epochs
    self.batch_size = batch_size
    self.clip_value = clip_value
    self.seed = seed
    self.eval_batch_size = eval_batch_size
    self.pad_mode = pad_mode
    self.allow_tf32 = allow_tf32
    self.progress = progress
    self.log = log
    self.device = torch.device(device)
    self.model = _make_model(model_kwargs, seed).to(self.device)
    self.optimizer = _sgd(self.model, lr, momentum, weight_decay)
    self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        self.optimizer, T_max=cosine_epochs or epochs)
    # uint8 NHWC crosses to the device (4x fewer bytes than float); the NCHW
    # transpose happens there. ~150 MB for all of CIFAR-10's training set.
    self.train_images = self._to_device_nchw(data.train_images)
    self.train_labels = torch.from_numpy(np.asarray(data.train_labels)).to(self.device).long()
    self.test_images = self._to_device_nchw(data.test_images)
    self.test_labels = torch.from_numpy(np.asarray(data.test_labels)).to(self.device).long()
    self.history: List[Dict[str, Any]] = []

  def _to_device_nchw(self, images: np.ndarray) -> torch.Tensor:
    nhwc = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
    return nhwc.permute(0, 3, 1, 2).contiguous()

  @property
  def steps_per_epoch(self) -> int:
    return math.ceil(len(self.train_images) / self.batch_size)

  def train_epoch(self, epoch: int) -> Dict[str, float]:
    """One epoch (0-based `epoch`) of the published step; the scheduler is NOT stepped.

    Returns:
      {'train_loss', 'train_accuracy' (%), 'epoch_train_s', 'img_per_s'},
      timed from the first step to the device finishing the last.
    """
    dev, model, optimizer = self.device, self.model, self.optimizer
    n = len(self.train_images)
    gen = torch.Generator(device=dev).manual_seed(epoch_seed(self.seed, epoch))
    order = torch.randperm(n, generator=gen, device=dev)
    steps = self.steps_per_epoch
    # Running sums stay on the device: reading them every step would make
    # the host wait for the GPU and cost the speed being measured.
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    bar = tqdm(total=steps, desc=f'torch epoch {epoch + 1}/{self.epochs}',
               disable=not self.progress, leave=False, dynamic_ncols=True)
    model.train()
    synchronize(dev)
    t0 = time.perf_counter()
    for i in range(steps):
      idx = order[i * self.batch_size:(i + 1) * self.batch_size]
      x = torch_augment(self.train_images[idx], gen, self.pad_mode)
      y = self.train_labels[idx]
      optimizer.zero_grad()
      logits = model(x)
      loss = F.cross_entropy(logits, y)
      loss.backward()
      if self.clip_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), self.clip_value)
      optimizer.step()
      loss_sum += loss.detach() * len(idx)
      correct += (logits.detach().argmax(1) == y).sum()
      # Like the JAX trainer: look at the numbers only every 50 steps.
      if not bar.disable and (i % 50 == 49 or i == steps - 1):
        seen = min((i + 1) * self.batch_size, n)
        bar.set_postfix(loss=f'{loss_sum.item() / seen:.3f}',
                        acc=f'{100.0 * correct.item() / seen:.1f}',
                        img_s=f'{seen / (time.perf_counter() - t0):.0f}')
        bar.update(i + 1 - bar.n)
    synchronize(dev)
    seconds = time.perf_counter() - t0
    bar.close()
    return {'train_loss': loss_sum.item() / n, 'train_accuracy': 100.0 * correct.item() / n,
            'epoch_train_s': seconds, 'img_per_s': n / seconds}

  @torch.no_grad()
  def evaluate(self) -> Dict[str, float]:
    """Test loss and accuracy (%) on the whole test set; normalization only."""
    self.model.eval()
    loss_sum = torch.zeros((), device=self.device)
    correct = torch.zeros((), dtype=torch.long, device=self.device)
    n = len(self.test_images)
    for start in range(0, n, self.eval_batch_size):
      x = normalize(self.test_images[start:start + self.eval_batch_size])
      y = self.test_labels[start:start + self.eval_batch_size]
      logits = self.model(x)
      loss_sum += F.cross_entropy(logits, y, reduction='sum')
      correct += (logits.argmax(1) == y).sum()
    self.model.train()
    return {'test_loss': loss_sum.item() / n, 'test_accuracy': 100.0 * correct.item() / n}

  def run(self) -> Dict[str, Any]:
    """Trains all epochs, evaluating after each; returns the summary dict.

    Returns:
      {'history': one dict per epoch with 'epoch' (1-based), 'learning_rate'
      (used in that epoch), 'train_loss', 'train_accuracy', 'test_loss',
      'test_accuracy', 'epoch_train_s', 'img_per_s', 'eval_s';
      'final_test_accuracy', 'best_test_accuracy', 'train_s' (wall time of
      all epochs including evaluation), 'img_per_s' (training images over
      training-only time), 'device', 'epochs', 'steps_per_epoch'}.
    """
    train_s, train_only_s, images = 0.0, 0.0, 0
    with backend_settings(self.device, self.allow_tf32):
      for epoch in range(len(self.history), self.epochs):
        lr = self.optimizer.param_groups[0]['lr']
        t0 = time.perf_counter()
        record: Dict[str, Any] = {'epoch': epoch + 1, 'learning_rate': lr}
        record.update(self.train_epoch(epoch))
        t1 = time.perf_counter()
        record.update(self.evaluate())  # .item() inside: the device is done when it returns
        t2 = time.perf_counter()
        record['eval_s'] = t2 - t1
        self.scheduler.step()  # once per epoch, as published
        train_s += t2 - t0
        train_only_s += record['epoch_train_s']
        images += len(self.train_images)
        self.history.append(record)
        if self.log is not None:
          self.log(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                            for k, v in record.items()))
    return {
        'history': self.history,
        'final_test_accuracy': self.history[-1]['test_accuracy'],
        'best_test_accuracy': max(r['test_accuracy'] for r in self.history),
        'train_s': train_s,
        'img_per_s': images / train_only_s if train_only_s else 0.0,
        'device': device_name(self.device),
        'epochs': self.epochs,
        'steps_per_epoch': self.steps_per_epoch,
    }


def train_torch_reference(data: Cifar10, **kwargs: Any) -> Dict[str, Any]:
  """Trains the reference with the published recipe, data on the device.

  Keyword arguments are `TorchTrainer`'s (epochs and device are required).

  Returns:
    The dict of `TorchTrainer.run`: 'history', 'final_test_accuracy',
    'best_test_accuracy', 'train_s', 'img_per_s', 'device', ...
  """
  return TorchTrainer(data, **kwargs).run()
