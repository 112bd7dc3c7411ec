"""flax-seresnet: the published CIFAR-10 SE-ResNet in JAX/Flax.

The PyTorch reference (`flax_seresnet.reference`) and the weight bridge
(`flax_seresnet.torch_bridge`) import torch; nothing here does.
"""
from flax_seresnet.model import SEResNet

__all__ = ['SEResNet']
__version__ = '0.2.0'  # as pyproject.toml (tests/test_packaging.py)
