"""Data parallelism over every device of every process: places the pure steps of `steps.py`.

- 'jit' (default): a 1-D mesh ('data'); state and dataset replicated (NamedSharding), batch
  indices sharded along their axis. XLA adds the gradient all-reduce, and BatchNorm's batch mean
  spans the whole sharded batch (synchronised statistics); per-device statistics (like torch's
  DataParallel) split the batch into one group per device.
- 'pmap': the same steps under jax.pmap with axis_name 'batch' (gradients pmean-ed; BatchNorm
  statistics pmean-ed over the axis, or per device).
Multi-host: every process holds the whole (small) dataset on its devices, plans the same global
batches, and feeds only its own rows. `PeerWatch` bounds every wait for another process.
"""
import contextlib
import functools
import os
import select
import socket
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flax_seresnet.errors import ConfigError

PMAP_AXIS = 'batch'
PEER_LOST_EXIT = 4  # a process of a multi-process run was lost or never joined


_EXITING = threading.Lock()  # held by the first thread to fail: the others wait for the exit


def _fail_now(message: str):
  """One line, then exit at once: JAX would otherwise wait, then abort with a C++ trace."""
  _EXITING.acquire()  # pylint: disable=consider-using-with  # never released: one line only
  print(f'error: {message}', file=sys.stderr, flush=True)
  os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access


_COORDINATOR, _RELAY = None, None  # the coordinator's address; the relay to it (a process > 0)


class _Relay:
  """A process other than 0 reaches the coordinator through this relay, which sees process 0's
  end before JAX does: it then holds JAX's side of the connection open, so that PeerWatch names
  process 0 in one line instead of JAX aborting with a C++ trace (its error polling fails at
  once)."""

  def __init__(self, coordinator: str, timeout: float):
    host, port = coordinator.rsplit(':', 1)
    self.target, self.timeout = (host.strip('[]'), int(port)), timeout
    self.listener = socket.create_server(('127.0.0.1', 0))
    self.address = f'127.0.0.1:{self.listener.getsockname()[1]}'
    self.on_end = lambda: None  # PeerWatch's: exits when process 0 is gone
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while True:
      inner = self.listener.accept()[0]
      try:
        outer = socket.create_connection(self.target, timeout=self.timeout)
        outer.settimeout(None)
      except OSError:  # not listening yet: JAX tries again
        inner.close()
        continue
      for source, sink in ((inner, outer), (outer, inner)):
        threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

  def _pump(self, source, sink):
    with contextlib.suppress(OSError):
      while data := source.recv(1 << 16):
        sink.sendall(data)
    self._ended()  # either side's end: JAX's side is closed only if process 0 is there
    for side in (source, sink):
      with contextlib.suppress(OSError):
        side.shutdown(socket.SHUT_RDWR)

  def _ended(self):
    """A connection ended: process 0 is gone if it takes no new one (else, a mere close)."""
    try:
      socket.create_connection(self.target, timeout=self.timeout).close()
    except OSError:
      self.on_end()


def initialize_distributed(dist_config) -> None:
  """Starts jax.distributed when config.distributed or the environment asks for it.

  'no' never; 'yes' always (JAX then reads SLURM, Open MPI or JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID); 'auto' when an address or several processes are given in
  the config or the environment, or when SLURM runs several tasks. Every process must join
  within dist_config.timeout_s, else each stops with one line (exit 4).
  """
  address = dist_config.coordinator_address or None
  num_processes = dist_config.num_processes or None
  if dist_config.initialize == 'no' or (dist_config.initialize == 'auto' and not (
      address or (num_processes or 0) > 1 or 'JAX_COORDINATOR_ADDRESS' in os.environ
      or int(os.environ.get('SLURM_NTASKS', '1')) > 1)):
    return
  timeout, me = dist_config.timeout_s, dist_config.process_id
  where = address or os.environ.get('JAX_COORDINATOR_ADDRESS', 'the coordinator')
  watchdog = threading.Timer(timeout, _fail_now, [
      f'the processes of this run did not all join {where} within {timeout} s '
      f'(config.distributed.timeout_s): this is process {me if me >= 0 else "?"}; start every '
      f'process (0..N-1) with the same coordinator_address, and check that process 0 runs'])
  watchdog.daemon = True
  watchdog.start()
  # Its preemption service would take SIGTERM over from interrupt.StopRequest, which already
  # makes every process stop at the same step.
  jax.config.update('jax_enable_preemption_service', False)
  global _COORDINATOR, _RELAY  # pylint: disable=global-statement
  _COORDINATOR = address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if _COORDINATOR and me > 0:
    _RELAY = _Relay(_COORDINATOR, timeout)
  try:  # JAX's own limits later than ours: its timeouts abort the process with a C++ trace
    jax.distributed.initialize(
        coordinator_address=_RELAY.address if _RELAY else address, num_processes=num_processes,
        process_id=me if me >= 0 else None, initialization_timeout=timeout + 60,
        heartbeat_timeout_seconds=timeout + 60)
  except (ValueError, RuntimeError) as e:
    raise ConfigError(f'jax.distributed could not start ({" ".join(str(e).split())}): check '
                      'config.distributed') from None
  finally:
    watchdog.cancel()


def agree_on(value: int) -> int:
  """Process 0's `value`, in every process (each must call this at the same point of its run):
  settings measured per process, such as how many steps run ahead, must be one for all."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _my_host():
  """This machine's address on the route to the coordinator, where the others reach it."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  address = _COORDINATOR or distributed.global_state.coordinator_address
  host = address.rsplit(':', 1)[0].strip('[]')
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  with socket.socket(family, socket.SOCK_DGRAM) as probe:
    probe.connect((host, 1))  # UDP: chooses the route, sends nothing
    return probe.getsockname()[0], family


class PeerWatch:
  """Names a process that ends or stops answering, then exits (4) instead of a wait and a C++
  abort.

  Every process holds a TCP connection to every other, opened at the start: the kernel closes it
  when that process ends however it ends (SIGKILL included), so a peer that is gone is named at
  once. A stopped or hung peer keeps its connection open: each process also bumps a counter in
  the coordinator's key-value store every second, from a daemon thread that runs whatever the
  main thread does, and a peer whose counter stands still for `timeout` seconds is lost, as is
  process 0 when the store itself stops answering.
  """
  BEAT_S = 1.0
  EXIT_GRACE_S = 0.5
  SETTLE_S = 0.5  # a peer's end reaches its link moments after a collective fails on it
  KEYS = 'flax_seresnet/peers/'

  def __init__(self, timeout: float):
    from jax._src import distributed  # the client of the coordinator's key-value store
    self.client, self.timeout = distributed.global_state.client, timeout
    self.me, self.count = jax.process_index(), jax.process_count()
    self._done, self._gone = threading.Event(), set()
    self._seen = {p: time.monotonic() for p in range(self.count) if p != self.me}
    self._beats, self._checked = {}, 0.0  # _checked: when the last round finding all well began
    self._links = self._link()
    if _RELAY:
      _RELAY.on_end = self._coordinator_gone
    threading.Thread(target=self._watch_links, daemon=True).start()
    threading.Thread(target=self._watch, daemon=True).start()

  def _link(self) -> dict:
    """{peer: a connection to it}; a peer that cannot be reached is left to the heartbeat."""
    host, family = _my_host()
    listener = socket.create_server(('', 0), family=family)
    self._accepted = []  # held open: the other side watches them
    threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
    self.client.key_value_set(f'{self.KEYS}link/{self.me}',
                              f'{host}:{listener.getsockname()[1]}')
    links = {}
    for peer in self._seen:
      try:
        host, port = self.client.blocking_key_value_get(
            f'{self.KEYS}link/{peer}', int(self.timeout * 1000)).rsplit(':', 1)
        links[peer] = socket.create_connection((host, int(port)), timeout=self.timeout)
      except Exception as e:  # pylint: disable=broad-except  # e.g. a firewall: beats remain
        logging.warning('no direct link to process %d (%s): a lost process %d is noticed '
                        'after %.0f s', peer, e, peer, self.timeout)
    return links

  def _accept(self, listener):
    while True:
      self._accepted.append(listener.accept()[0])

  def _watch_links(self):
    """A link becomes readable only when its peer's end closes it."""
    links = dict(self._links)
    while links:
      readable = select.select(list(links.values()), [], [])[0]
      for peer in [p for p, s in links.items() if s in readable]:
        del links[peer]
        self._gone.add(peer)
        if not self._done.is_set():
          self._ended(peer)

  def _ended(self, peer: int):
    """A peer's connection closed: it said it was done, failed, or it was killed."""
    try:
      state = self.client.key_value_try_get(f'{self.KEYS}state/{peer}') if peer else None
    except Exception:  # pylint: disable=broad-except  # not set: it said nothing
      state = None
    if state == 'done':
      return
    if state == 'failed':
      return self._failed(peer)
    role = ' (the coordinator)' if peer == 0 else ''
    self._lost(f'process {peer} of {self.count}{role} ended without a word (its connection '
               'closed: killed, or crashed)')

  def _coordinator_gone(self):
    self._gone.add(0)
    if not self._done.is_set():
      self._ended(0)

  def _failed(self, peer: int):
    time.sleep(self.EXIT_GRACE_S)  # it is on its way out: let it go first (see close)
    self._lost(f'process {peer} of {self.count} stopped with an error (see its output)')

  def _watch(self):
    while not self._done.wait(self.BEAT_S):
      began = time.monotonic()
      try:
        self.client.key_value_increment(f'{self.KEYS}beat/{self.me}', 1)
        values = dict(self.client.key_value_dir_get(self.KEYS))  # one call for every peer
      except Exception:  # pylint: disable=broad-except  # the store lives in process 0
        if self._done.is_set():
          return
        return self._lost(f'process 0 of {self.count} (the coordinator) stopped answering')
      if self._round(values):
        self._checked = began

  def _round(self, values: dict) -> bool:
    """Reads every peer's state and counter; True when all are well."""
    for peer, seen in list(self._seen.items()):
      state, beat = values.get(f'{self.KEYS}state/{peer}'), values.get(f'{self.KEYS}beat/{peer}')
      if state == 'failed':
        return self._failed(peer)
      if state == 'done':
        del self._seen[peer]
      elif beat != self._beats.get(peer):
        self._beats[peer], self._seen[peer] = beat, time.monotonic()
      elif time.monotonic() - seen > self.timeout:
        return self._lost(f'process {peer} of {self.count} stopped answering (no sign of life '
                          f'for {self.timeout:.0f} s)')
    return True

  def _lost(self, what: str):
    _fail_now(f'{what}; this is process {self.me}: the checkpoints saved before are intact; '
              'restart every process with the same command to resume')

  def explain(self) -> None:
    """After an exception: when a peer's end caused it (a failed collective), the watch names
    the peer and ends the process; returns as soon as every peer is known to be there (the
    exception is then a bug of its own), at the latest when a silent peer would be named."""
    asked = time.monotonic()
    deadline = asked + self.timeout + 5 * self.BEAT_S
    while time.monotonic() < deadline:
      there = all(p in self._links and p not in self._gone or since > asked
                  for p, since in list(self._seen.items()))
      if there and self._checked > asked + self.SETTLE_S:
        return
      time.sleep(0.05)

  def close(self, failed: bool = False):
    """Stops watching; tells the others that this process is done, or failed. Process 0 then
    waits (at most `timeout`) until every other process has said so or ended, and a moment more
    for them to exit: it holds the coordinator, whose end makes JAX abort a process still
    running."""
    self._done.set()
    try:
      self.client.key_value_set(f'{self.KEYS}state/{self.me}', 'failed' if failed else 'done')
      deadline = time.monotonic() + self.timeout
      while self.me == 0 and time.monotonic() < deadline:
        said = {int(k.rsplit('/', 1)[1])
                for k, _ in self.client.key_value_dir_get(f'{self.KEYS}state/')}
        if len(said | self._gone | {self.me}) == self.count:
          time.sleep(self.EXIT_GRACE_S)
          return
        time.sleep(0.05)
    except Exception:  # pylint: disable=broad-except
      pass


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
    """(state, data, indices, key_data, stop) -> (state, metric sums); the state is donated.

    `stop` holds each device's stop request (0 or 1, from `stop_flags`); the metrics carry their
    maximum as 'stop', so every process learns of a request at the same step.
    """
    def step(state, data, indices, key_data, stop, axis_name=None):
      state, metrics = step_fn(state, data, indices, key_data, axis_name=axis_name)
      return state, dict(metrics, stop=jnp.max(
          jax.lax.pmax(stop, axis_name) if axis_name else stop))
    return self._compile(step, (0,), self.replicated)

  def stop_flags(self, requested: bool):
    """This process's stop request for `compile_train`'s step, one flag per local device."""
    return self.shard(np.full(len(self.local_devices), int(requested), np.int32))

  def compile_eval(self, step_fn, out_shardings=None):
    """(variables, data, indices, mask) -> metric sums, or whatever `step_fn` returns."""
    return self._compile(step_fn, (), out_shardings or self.replicated)

  def replicate(self, tree):
    """A host pytree onto every device (for pmap: stacked along a leading device axis)."""
    def put(x):
      x = np.asarray(x)
      if self.mode == 'pmap':
        return self._stack([x] * len(self.local_devices))
      return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
    return jax.tree.map(put, jax.device_get(tree))

  def shard(self, local_rows: np.ndarray):
    """This process's rows of a global batch (BatchPlan.local), split over its devices."""
    if self.mode == 'pmap':
      return self._stack(list(local_rows.reshape((len(self.local_devices), -1) +
                                                 local_rows.shape[1:])))
    return jax.make_array_from_process_local_data(self.sharded, local_rows)

  def _stack(self, per_device):
    """One array per local device, stacked along a device axis spanning every process's
    devices, as pmap lays out its inputs."""
    shards = [jax.device_put(x[None], d) for x, d in zip(per_device, self.local_devices)]
    shape = (self.num_devices,) + np.shape(per_device[0])
    return jax.make_array_from_single_device_arrays(shape, self.sharded, shards)

  def local(self, tree):
    """This process's first replica of replicated outputs, still on its device (for pmap with
    the device axis of length 1): reading it needs no other process."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)

  @property
  def metric_shape(self) -> tuple:
    """The shape of a `local` scalar metric."""
    return (1,) if self.mode == 'pmap' else ()

  def to_host(self, tree):
    """Replicated values as NumPy, read from a local replica (no cross-process computation)."""
    first = (lambda x: x[0]) if self.mode == 'pmap' else (lambda x: x)
    return jax.tree.map(lambda x: first(np.asarray(x.addressable_data(0))), tree)
