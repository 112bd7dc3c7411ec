"""Data parallelism over every device of every process: places the pure steps of `steps.py`.

- 'jit' (default): a 1-D mesh ('data'); state and dataset replicated (NamedSharding), batch
  indices sharded along their axis. XLA adds the gradient all-reduce, and BatchNorm's batch mean
  spans the whole sharded batch (synchronised statistics); per-device statistics (like torch's
  DataParallel) split the batch into one group per device.
- 'pmap': the same steps under jax.pmap with axis_name 'batch' (gradients pmean-ed; BatchNorm
  statistics pmean-ed over the axis, or per device).
Multi-host: every process holds the whole (small) dataset on its devices, plans the same global
batches, and feeds only its own slice.
"""
import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import input_pipeline
from flax_seresnet.errors import ConfigError

PMAP_AXIS = 'batch'


def maybe_initialize_distributed(dist_config) -> bool:
  """Starts jax.distributed when config.distributed or the environment asks for it.

  'no' never; 'yes' always (JAX then reads SLURM, Open MPI or JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID); 'auto' when an address or several processes are given in
  the config or the environment, or when SLURM runs several tasks.
  """
  address = dist_config.coordinator_address or None
  num_processes = dist_config.num_processes or None
  if dist_config.initialize == 'no' or (dist_config.initialize == 'auto' and not (
      address or (num_processes or 0) > 1 or 'JAX_COORDINATOR_ADDRESS' in os.environ
      or int(os.environ.get('SLURM_NTASKS', '1')) > 1)):
    return False
  jax.distributed.initialize(
      coordinator_address=address, num_processes=num_processes,
      process_id=dist_config.process_id if dist_config.process_id >= 0 else None)
  return True


class DataParallel:
  """Chooses the devices, places arrays on them and compiles steps for one parallel mode."""

  def __init__(self, config):
    self.mode, self.sync_batch_stats = config.parallel, config.sync_batch_stats
    devices = jax.devices()
    if config.num_devices > len(devices):
      raise ConfigError(f'config.num_devices={config.num_devices}: this process sees '
                        f'{len(devices)} devices; use 0 (all) or at most {len(devices)}.')
    self.devices = devices[:config.num_devices or len(devices)]
    self.num_devices = len(self.devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.array(self.devices), ('data' if self.mode == 'jit' else PMAP_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.sharded = NamedSharding(self.mesh, P(self.mesh.axis_names[0]))

  def model_overrides(self) -> dict:
    """SEResNet fields for this mode's BatchNorm statistics."""
    if self.mode == 'pmap':
      return {'bn_axis_name': PMAP_AXIS} if self.sync_batch_stats else {}
    return {} if self.sync_batch_stats else {'bn_groups': self.num_devices}

  def _compile(self, step_fn, donate, out_shardings):
    if self.mode == 'pmap':
      # pmap's devices= is for one process; with several, it maps over all of them itself.
      return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
                      donate_argnums=donate,
                      devices=self.devices if jax.process_count() == 1 else None)
    return jax.jit(step_fn, donate_argnums=donate, out_shardings=out_shardings)

  def compile_train(self, step_fn):
    """(state, data, indices, key_data) -> (state, metric sums); the state is donated."""
    return self._compile(step_fn, (0,), self.replicated)

  def compile_eval(self, step_fn):
    """(variables, data, indices, mask) -> (metric sums, predictions)."""
    return self._compile(step_fn, (), (self.replicated, self.sharded))

  def replicate(self, tree):
    """A host pytree onto every device (for pmap: stacked along a leading device axis)."""
    def put(x):
      x = np.asarray(x)
      if self.mode == 'pmap':
        return self._stack([x] * len(self.local_devices))
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(put, jax.device_get(tree))

  def shard(self, global_batch: np.ndarray):
    """This process's slice of a global batch, split over its local devices."""
    local = input_pipeline.process_slice(global_batch, jax.process_index(), jax.process_count())
    if self.mode == 'pmap':
      return self._stack(list(local.reshape((len(self.local_devices), -1) + local.shape[1:])))
    return jax.make_array_from_process_local_data(self.sharded, local)

  def _stack(self, per_device):
    """One array per local device, stacked along a device axis spanning every process's
    devices, as pmap lays out its inputs."""
    shards = [jax.device_put(x[None], d) for x, d in zip(per_device, self.local_devices)]
    shape = (self.num_devices,) + np.shape(per_device[0])
    return jax.make_array_from_single_device_arrays(shape, self.sharded, shards)

  def to_host(self, tree):
    """Replicated values as NumPy, read from a local replica (no cross-process computation)."""
    first = (lambda x: x[0]) if self.mode == 'pmap' else (lambda x: x)
    return jax.tree.map(lambda x: first(np.asarray(x.addressable_data(0))), tree)
