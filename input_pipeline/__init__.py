"""The CIFAR-10 input pipeline: loading, safe unpickling, download, batching, augmentation.

Host side (numpy): `load_dataset` / `load_cifar10` put the whole dataset in
memory as uint8 NHWC images and int32 labels; `epoch_permutation`,
`train_batches`, `eval_batches` and `process_slice` plan which example indices
form each batch. Device side (jax, inside the jitted step): `example_keys`,
`augment` (random crop + flip + normalize) for training, `normalize` for
evaluation.
"""
from input_pipeline.augment import (CIFAR10_MEAN, CIFAR10_STD, apply_crop_flip, augment,
                                    draw_crop_flip, example_keys, normalize, random_crop_flip)
from input_pipeline.batching import (epoch_permutation, eval_batches, process_slice,
                                     steps_per_epoch, train_batches)
from input_pipeline.cifar10 import Cifar10, class_names, load_cifar10, load_unlabeled
from input_pipeline.dataset import load_dataset
from input_pipeline.download import OFFICIAL_MD5, OFFICIAL_URL, download_cifar10
from flax_seresnet.errors import DataError
from input_pipeline.tfds_source import load_cifar10_tfds

__all__ = [
    'CIFAR10_MEAN',
    'CIFAR10_STD',
    'Cifar10',
    'DataError',
    'OFFICIAL_MD5',
    'OFFICIAL_URL',
    'apply_crop_flip',
    'augment',
    'class_names',
    'download_cifar10',
    'draw_crop_flip',
    'epoch_permutation',
    'eval_batches',
    'example_keys',
    'load_cifar10',
    'load_cifar10_tfds',
    'load_dataset',
    'load_unlabeled',
    'normalize',
    'process_slice',
    'random_crop_flip',
    'steps_per_epoch',
    'train_batches',
]
