"""The published recipe: SE-ResNet [4, 4, 3], SGD 0.1 / 0.9 / 5e-4, cosine over 200 epochs, batch
128, clip each gradient element at 0.1, float32.

It is every setting's default (flax_seresnet/config.py); `python main.py --list_config` lists
them with what they mean. The other configs start from this one and change a few keys.
"""
import ml_collections

from flax_seresnet import config as settings


def get_config() -> ml_collections.ConfigDict:
  return settings.defaults()
