"""A tiny network on a slice of the data: an end-to-end check on a CPU (2 cores: about a minute).

It must clearly learn (>= 30% test accuracy on the real data).
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
