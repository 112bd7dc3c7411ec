"""Shared fixtures. Tests run on the CPU; the full network only through eval_shape or tiny batches."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_CIFAR10 = REPO.parent / 'shared' / 'data' / 'cifar-10-batches-py'


@pytest.fixture(scope='session')
def real_cifar10_dir():
  if not (REAL_CIFAR10 / 'data_batch_1').exists():
    pytest.skip(f'real CIFAR-10 not found at {REAL_CIFAR10}')
  return REAL_CIFAR10
