"""The published recipe: SE-ResNet [4, 4, 3], SGD 0.1 / 0.9 / 5e-4, cosine over 200 epochs.

The original hard-codes CosineAnnealingLR(T_max=200) whatever the number of epochs; here the
horizon follows num_epochs unless cosine_epochs is set (cosine_epochs=200 is the original's
schedule for a run cut short).

Every key is documented here once; the other configs start from this one and change a few keys.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'seresnet'

  # --- The network (flax_seresnet.SEResNet fields); the defaults are the published model.
  config.model = ml_collections.ConfigDict()
  config.model.stage_blocks = (4, 4, 3)
  config.model.widths = (64, 128, 256)
  config.model.kernel_sizes = (3, 3, 3)           # conv kernel size per stage
  config.model.shortcut_kernel_sizes = (1, 1, 1)  # projection-shortcut kernel size per stage
  config.model.se_position = 'stem'               # 'stem' (published), 'blocks' or 'none'
  config.model.se_reduction = 16                  # 64 channels -> 4 in the published SE block
  config.model.preact = False                     # pre-activation blocks instead of post-activation
  config.model.dropout = 0.0                      # after every residual block and before the
                                                  # classifier, as the original's `drop`
  config.model.avg_pool_kernel_size = 8           # the paper's P: avg_pool2d(out, P) before the
                                                  # classifier (8: global on the final 8x8 map)
  config.model.num_classes = 10
  config.model.dtype = 'float32'                  # compute dtype: 'float32' or 'bfloat16'

  # --- Data.
  config.dataset = 'cifar10'        # 'cifar10' (the pickled python batches) or 'tfds'
  config.data_dir = ''              # '': $CIFAR10_DATA_DIR, else ~/.cache/flax-seresnet/
                                    # cifar-10-batches-py (downloaded and verified if missing)
  config.download = False           # also download into a data_dir given here when it is missing
  config.train_subset = 0           # use only the first N training images (0: all)
  config.test_subset = 0            # evaluate on the first N test images only (0: all)
  config.tfds_data_dir = ''         # dataset='tfds': tfds' data folder ('': its default)
  config.augment = True             # random crop + flip (False: normalization only)
  config.pad_mode = 'zeros'         # random-crop padding: 'zeros' (published code) or 'reflect'
  config.crop_padding = 4
  config.flip = True
  config.drop_last = False          # keep the last partial batch, as torch's DataLoader does

  # --- Optimisation (flax_seresnet.optim).
  config.batch_size = 128           # global batch, over all devices and processes
  config.eval_batch_size = 1000
  config.num_epochs = 200
  config.learning_rate = 0.1        # peak learning rate (max_lr for one-cycle)
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4        # coupled, added to the gradient as torch.optim.SGD does
  config.schedule = 'cosine'        # 'cosine', 'onecycle' or 'constant'
  config.schedule_per_step = False  # cosine: False steps once per epoch like CosineAnnealingLR
  config.cosine_epochs = 0          # cosine T_max in epochs; 0: num_epochs (the original: 200)
  config.warmup_epochs = 0.0        # linear warmup from 0 (cosine and constant only)
  config.onecycle = ml_collections.ConfigDict()
  config.onecycle.pct_start = 0.3
  config.onecycle.div_factor = 25.0
  config.onecycle.final_div_factor = 1e4
  config.onecycle.cycle_momentum = False  # torch's default is True (0.85 <-> 0.95)
  config.onecycle.base_momentum = 0.85
  config.onecycle.max_momentum = 0.95
  config.grad_clip = 'value'        # 'value' (clip_grad_value_, published), 'global_norm' or 'none'
  config.grad_clip_value = 0.1      # the value bound, or the norm bound for 'global_norm'
  config.label_smoothing = 0.0
  config.ema_decay = 0.0            # exponential moving average of the parameters (0: off)

  # --- Evaluation.
  config.eval_flip_tta = False      # also average the logits of the mirrored test images
  config.eval_every_epochs = 1      # 0: only at the end of the run

  # --- Devices.
  config.parallel = 'jit'           # 'jit' (mesh + NamedSharding) or 'pmap'
  config.num_devices = 0            # use the first N devices (one process only); 0: all
  config.sync_batch_stats = True    # False: per-device BatchNorm statistics, like DataParallel
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = 'auto'  # 'auto' (when env/config asks), 'yes' or 'no'
  config.distributed.coordinator_address = ''  # host:port; '' reads the environment
  config.distributed.num_processes = 0         # 0 reads the environment
  config.distributed.process_id = -1           # -1 reads the environment

  # --- Records and checkpoints.
  config.seed = 0
  config.checkpoint_every_epochs = 10
  config.keep_checkpoints = 3
  config.progress_bar = True
  config.max_epochs_this_run = 0    # stop (with a checkpoint) after this many epochs; 0: no limit
  return config
