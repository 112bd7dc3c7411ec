"""The published SE-ResNet in PyTorch: the reference the Flax model is checked against.

Module names follow the original code, so `state_dict()` keys match the original checkpoints:
conv1, bn1, seblock.conv1, seblock.conv2, residual_layers.{stage}.{block}.{conv1,bn1,conv2,bn2},
residual_layers.{stage}.{block}.shortcut.0 (conv) / .shortcut.1 (BatchNorm), linear.
The paper's options (SE in every block, pre-activation, dropout, kernel sizes, widths, the
average-pool kernel P) are constructor arguments with the names and defaults of
`flax_seresnet.SEResNet`. Inputs are NCHW, 32x32.

This is the only module of the library (with torch_bridge) that imports torch.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):

  def __init__(self, channels: int, reduction: int = 16):
    super().__init__()
    hidden = max(channels // reduction, 1)
    self.conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
    self.conv2 = nn.Conv2d(hidden, channels, kernel_size=1)

  def forward(self, x):
    w = F.adaptive_avg_pool2d(x, 1)
    return x * torch.sigmoid(self.conv2(F.relu(self.conv1(w))))


class BasicBlock(nn.Module):

  def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_size: int = 3,
               shortcut_kernel_size: int = 1, preact: bool = False, use_se: bool = False,
               se_reduction: int = 16, dropout: float = 0.0):
    super().__init__()
    self.preact = preact
    k, sk = kernel_size, shortcut_kernel_size
    self.bn1 = nn.BatchNorm2d(in_planes if preact else planes)
    self.conv1 = nn.Conv2d(in_planes, planes, k, stride=stride, padding=k // 2, bias=False)
    self.conv2 = nn.Conv2d(planes, planes, k, stride=1, padding=k // 2, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut.append(nn.Conv2d(in_planes, planes, sk, stride=stride, padding=sk // 2,
                                     bias=False))
      if not preact:
        self.shortcut.append(nn.BatchNorm2d(planes))
    if use_se:
      self.se = SEBlock(planes, se_reduction)
    self.dropout = nn.Dropout(dropout)  # the original's `drop`, after the block's final ReLU

  def forward(self, x):
    if self.preact:
      out = F.relu(self.bn1(x))
      residual = self.shortcut(out) if len(self.shortcut) else x
      out = self.conv2(F.relu(self.bn2(self.conv1(out))))
    else:
      residual = self.shortcut(x)
      out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if hasattr(self, 'se'):
      out = self.se(out)
    out = out + residual
    return self.dropout(out if self.preact else F.relu(out))


class TorchSEResNet(nn.Module):
  """PyTorch twin of `flax_seresnet.SEResNet` (NCHW input)."""

  def __init__(self, stage_blocks: Sequence[int] = (4, 4, 3),
               widths: Sequence[int] = (64, 128, 256), kernel_sizes: Sequence[int] = (3, 3, 3),
               shortcut_kernel_sizes: Sequence[int] = (1, 1, 1), se_position: str = 'stem',
               se_reduction: int = 16, preact: bool = False, dropout: float = 0.0,
               avg_pool_kernel_size: int = 8, num_classes: int = 10):
    super().__init__()
    self.preact, self.pool = preact, avg_pool_kernel_size
    self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    if se_position == 'stem':
      self.seblock = SEBlock(widths[0], se_reduction)
    self.residual_layers = nn.ModuleList()
    in_planes = widths[0]
    for stage, (blocks, planes) in enumerate(zip(stage_blocks, widths)):
      layer = nn.Sequential()
      for block in range(blocks):
        layer.append(BasicBlock(in_planes, planes, 2 if stage and not block else 1,
                                kernel_sizes[stage], shortcut_kernel_sizes[stage], preact,
                                se_position == 'blocks', se_reduction, dropout))
        in_planes = planes
      self.residual_layers.append(layer)
    if preact:
      self.bn_final = nn.BatchNorm2d(in_planes)
    self.dropout = nn.Dropout(dropout)
    side = (32 >> (len(stage_blocks) - 1)) // avg_pool_kernel_size  # pooled map side
    self.linear = nn.Linear(in_planes * side * side, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    if hasattr(self, 'seblock'):
      out = self.seblock(out)
    for layer in self.residual_layers:
      out = layer(out)
    if self.preact:
      out = F.relu(self.bn_final(out))
    out = F.avg_pool2d(out, self.pool).flatten(1)
    return self.linear(self.dropout(out))
