"""The published network with the paper's one-cycle schedule and global-norm clipping."""
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
