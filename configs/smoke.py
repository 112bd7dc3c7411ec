"""A tiny network on a slice of the real data: trains on a laptop CPU in about a minute.

Used by the tests and as a quick end-to-end check: it must clearly learn (>= 30% test accuracy).
"""
from configs import seresnet


def get_config():
  config = seresnet.get_config()
  config.name = 'smoke'
  config.model.stage_blocks = (1, 1, 1)
  config.model.widths = (16, 32, 64)
  config.train_subset = 5000
  config.batch_size = 100
  config.eval_batch_size = 1000
  config.num_epochs = 4
  config.learning_rate = 0.05
  config.checkpoint_every_epochs = 2
  return config
