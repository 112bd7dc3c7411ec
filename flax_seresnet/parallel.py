"""Data parallelism over every device of every process, in two forms of one step function.

- 'jit' (default): a 1-D device mesh ('data'), the state and dataset replicated with
  NamedSharding, each batch sharded along its first axis. XLA inserts the gradient all-reduce
  and, because BatchNorm's mean runs over the whole (sharded) batch, synchronised statistics.
  Per-device statistics (like torch DataParallel) split the batch into one group per device.
- 'pmap': the same step under jax.pmap with axis_name='batch': gradients are pmean-ed, BatchNorm
  statistics are pmean-ed over the axis (synchronised) or kept per device.

Multi-host: every process holds the whole (small) dataset on its devices, computes the same
global batch plan, and feeds only its own slice (input_pipeline.process_slice).
"""
import os
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flax_seresnet.errors import ConfigError

PARALLEL_MODES = ('jit', 'pmap')
PMAP_AXIS = 'batch'


def maybe_initialize_distributed(dist_config) -> bool:
  """Starts jax.distributed when the config or the environment asks for several processes.

  config.distributed.initialize: 'no' never, 'yes' always (JAX then detects SLURM, Open MPI or
  its own JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables), 'auto' when an
  address or a process count is given in the config or those environment variables, or when
  SLURM runs more than one task.
  """
  mode = dist_config.initialize
  if mode not in ('auto', 'yes', 'no'):
    raise ConfigError(f"config.distributed.initialize={mode!r} is not one of 'auto', 'yes', 'no'.")
  address = dist_config.coordinator_address or None
  num_processes = dist_config.num_processes or None
  process_id = dist_config.process_id if dist_config.process_id >= 0 else None
  if mode == 'no':
    return False
  if mode == 'auto':
    from_env = ('JAX_COORDINATOR_ADDRESS' in os.environ
                or int(os.environ.get('SLURM_NTASKS', '1')) > 1)
    if not (address or (num_processes or 0) > 1 or from_env):
      return False
  jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                             process_id=process_id)
  return True


class DataParallel:
  """Places arrays on the devices and compiles step functions for one parallel mode."""

  def __init__(self, mode: str = 'jit', sync_batch_stats: bool = True, num_devices: int = 0):
    if mode not in PARALLEL_MODES:
      raise ConfigError(f'config.parallel={mode!r} is not one of {PARALLEL_MODES}.')
    self.mode = mode
    self.sync_batch_stats = sync_batch_stats
    devices = jax.devices()
    if num_devices:
      if jax.process_count() > 1 or num_devices > len(devices):
        raise ConfigError(f'config.num_devices={num_devices}: this process sees '
                         f'{len(devices)} devices in {jax.process_count()} process(es); use 0 '
                         '(all) or at most the local device count with one process.')
      devices = devices[:num_devices]
    self.devices = devices
    self.num_devices = len(devices)
    self.local_devices = [d for d in devices if d.process_index == jax.process_index()]
    if mode == 'jit':
      self.mesh = Mesh(np.array(devices), ('data',))
      self.replicated = NamedSharding(self.mesh, P())
      self.sharded = NamedSharding(self.mesh, P('data'))

  # --- The model and the step ----------------------------------------------------------------
  def model_overrides(self) -> Dict[str, Any]:
    """SEResNet fields for this mode's BatchNorm statistics."""
    if self.mode == 'pmap':
      return {'bn_axis_name': PMAP_AXIS} if self.sync_batch_stats else {}
    return {} if self.sync_batch_stats else {'bn_groups': self.num_devices}

  @property
  def axis_name(self) -> Optional[str]:
    return PMAP_AXIS if self.mode == 'pmap' else None

  def compile_train_step(self, step_fn: Callable) -> Callable:
    """(state, data, indices, key) -> (state, metrics), gathering the batch on the device.

    `data` is {'images', 'labels'} held on the devices; `indices` are the batch's dataset
    indices. Gathering inside the step keeps the data on the device and costs one dispatch.
    """
    def gather_and_step(state, data, indices, key):
      batch = {'images': data['images'][indices], 'labels': data['labels'][indices],
               'ids': indices}
      if self.mode == 'jit':
        batch = jax.lax.with_sharding_constraint(batch, self.sharded)
      return step_fn(state, batch, key, axis_name=self.axis_name)

    if self.mode == 'pmap':
      return jax.pmap(gather_and_step, axis_name=PMAP_AXIS, in_axes=(0, 0, 0, None),
                      donate_argnums=(0,), devices=self._pmap_devices())
    return jax.jit(gather_and_step, donate_argnums=(0,),
                   out_shardings=(self.replicated, self.replicated))

  def compile_eval_step(self, step_fn: Callable) -> Callable:
    """(variables, data, indices, mask) -> metric sums (or predictions), on device data."""
    def gather_and_eval(variables, data, indices, mask):
      batch = {'images': data['images'][indices], 'labels': data['labels'][indices],
               'mask': mask}
      if self.mode == 'jit':
        batch = jax.lax.with_sharding_constraint(batch, self.sharded)
      return step_fn(variables, batch, axis_name=self.axis_name)

    if self.mode == 'pmap':
      return jax.pmap(gather_and_eval, axis_name=PMAP_AXIS, devices=self._pmap_devices())
    return jax.jit(gather_and_eval)

  def _pmap_devices(self):
    # pmap's devices= is for one process; with several, it maps over all of them itself.
    return self.devices if jax.process_count() == 1 else None

  # --- Placing arrays ------------------------------------------------------------------------
  def replicate(self, tree):
    """A host (or single-device) pytree onto every device."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: self._stack_on_local_devices(
          [np.asarray(x)] * len(self.local_devices)), jax.device_get(tree))
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), self.replicated,
                                               lambda idx, x=np.asarray(x): x[idx]),
        jax.device_get(tree))

  def shard_batch(self, local_array: np.ndarray):
    """This process's slice of a global batch, split over its local devices."""
    if self.mode == 'pmap':
      n = len(self.local_devices)
      return self._stack_on_local_devices(list(local_array.reshape((n, -1) + local_array.shape[1:])))
    return jax.make_array_from_process_local_data(self.sharded, local_array)

  def _stack_on_local_devices(self, per_device):
    """One array per local device, stacked along a leading device axis that spans every
    process's devices, as pmap lays its inputs out (jax.device_put_replicated and
    device_put_sharded are gone from JAX 0.10)."""
    if not hasattr(self, '_pmap_sharding'):
      mesh = Mesh(np.array(self.devices), (PMAP_AXIS,))
      self._pmap_sharding = NamedSharding(mesh, P(PMAP_AXIS))
    shards = [jax.device_put(x[None], d) for x, d in zip(per_device, self.local_devices)]
    shape = (self.num_devices,) + np.shape(per_device[0])
    return jax.make_array_from_single_device_arrays(shape, self._pmap_sharding, shards)

  def to_host(self, tree):
    """Replicated device values as NumPy (one replica; every replica holds the same)."""
    # Local reads only: indexing a global array would be a computation that every process
    # must join, and only process 0 writes records.
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
