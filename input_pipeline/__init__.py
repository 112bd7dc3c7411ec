"""CIFAR-10 for training: read safely from the original files, checked, planned into batches on
the host, augmented on the device.

Host side (numpy): `load_dataset` puts the whole dataset in memory as uint8 NHWC images and int32
labels; a `BatchPlan` says which examples form each batch and which rows each process feeds.
Device side (jax, inside the jitted step): `example_keys`, `augment`, `normalize`.
This package imports nothing from flax_seresnet; its errors are `DataError`s.
"""
from input_pipeline.augment import (CIFAR10_MEAN, CIFAR10_STD, PAD_MODES, apply_crop_flip, augment,
                                    draw_crop_flip, example_keys, normalize, random_crop_flip)
from input_pipeline.batching import BatchPlan, epoch_permutation
from input_pipeline import images
from input_pipeline.cifar10 import CLASS_NAMES, Cifar10, class_names, load_cifar10, load_unlabeled
from input_pipeline.cifar10c import Cifar10C, load_corruption, open_cifar10c
from input_pipeline.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from input_pipeline import dataset
from input_pipeline.dataset import check_cifar10_folder, load_dataset, load_splits
from input_pipeline.errors import DataError
from input_pipeline.images import load_images
