"""The published network with a one-cycle schedule and global-norm clipping.

The paper's text mentions a one-cycle schedule and "clipping 0.1" only in general terms; its code
uses neither (it clips each gradient element at 0.1, configs/seresnet.py). The settings below
(torch's OneCycleLR defaults with max_lr 0.1, gradient norm clipped at 1.0) are this project's
reading, not the paper's: no one-cycle result of the paper can be reproduced from its text.
"""
from configs import seresnet


def get_config():
  config = seresnet.get_config()
  config.name = 'seresnet_onecycle'
  config.schedule = 'onecycle'
  config.learning_rate = 0.1       # max_lr
  config.onecycle.pct_start = 0.3
  config.onecycle.cycle_momentum = True  # as torch's OneCycleLR does by default
  config.grad_clip = 'global_norm'
  config.grad_clip_value = 1.0
  config.num_epochs = 200
  return config
