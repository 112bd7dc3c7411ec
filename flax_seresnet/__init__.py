"""flax-seresnet: the published CIFAR-10 SE-ResNet in JAX/Flax.

The PyTorch reference (`flax_seresnet.reference`) and the weight bridge
(`flax_seresnet.torch_bridge`) import torch; nothing here does. `SEResNet` is imported when first
used, so that a command that needs no jax (--help, --list_config) does not import it.
"""
__all__ = ['SEResNet']
__version__ = '0.2.0'  # as pyproject.toml (tests/test_packaging.py)


def __getattr__(name):
  if name == 'SEResNet':
    from flax_seresnet.model import SEResNet  # pylint: disable=import-outside-toplevel
    return SEResNet
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
