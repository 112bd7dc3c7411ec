"""A trained model out of the training tool: inference as a jax.export artifact and as an ONNX
model (uint8 NHWC images in, float32 logits out, the normalisation inside, any batch of 1 or more),
with a model card.

  export(config, output_dir, workdir)   writes model.jax, model.onnx and model.json
  load(output_dir)                      the artifact, checked against the card: .call(images)

The folder is replaced as a unit: everything is written into a fresh hidden sibling, which then
takes the old folder's place in one atomic exchange (renameat2), so that a full disk, a kill or a
signal at any moment leaves the old export or the new one, whole, and never a mix of the two.
The card holds the SHA-256 of every other file, and `load` checks each.

ONNX goes through the PyTorch twin (reference.TorchSEResNet, the bridged weights) and
torch.onnx's TorchScript exporter: measured here against jax2onnx 0.17 on the published network
(2-core CPU), it exported in 0.5 s instead of 10.4 s, and onnxruntime ran its graph at 119
instead of 98 images/s; both gave logits equal to JAX's. The twin is the one the tests hold to
the Flax model; jax2onnx also needed flax's avg_pool called with keywords.
A jax.export artifact is a program: deserialise only artifacts from a trusted source.
"""
import ctypes
import errno
import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
from absl import logging

import flax_seresnet
import input_pipeline
from flax_seresnet import files, identity, inference, interrupt, steps, storage
from flax_seresnet.errors import CheckpointError, Interrupted, UserError
from input_pipeline.files import read_file

ARTIFACT, ONNX, CARD = 'model.jax', 'model.onnx', 'model.json'
NAMES = (ARTIFACT, ONNX, CARD)  # all an export folder holds
PLATFORMS = ('cpu', 'cuda')
INPUT = 'uint8 (N, 32, 32, 3), RGB, NHWC, 0..255; N >= 1'


def jax_artifact(model, variables, flip_tta: bool) -> bytes:
  """Serialised jax.export of inference, lowered for PLATFORMS, the batch size symbolic."""
  infer = jax.jit(lambda images: steps.predict_logits(model.apply, variables, images, flip_tta))
  batch, = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.uint8)
  return bytes(jax.export.export(infer, platforms=PLATFORMS)(spec).serialize())


def onnx_model(model, variables, flip_tta: bool) -> bytes:
  """The same inference as ONNX, through the PyTorch twin (needs torch and onnx)."""
  import torch  # pylint: disable=import-outside-toplevel
  from flax_seresnet import reference, torch_bridge  # pylint: disable=import-outside-toplevel
  # The twin's own arguments, read from its signature: the fields are named by model and twin.
  twin_fields = inspect.signature(reference.TorchSEResNet).parameters
  net = reference.TorchSEResNet(**{name: getattr(model, name) for name in twin_fields})
  net.load_state_dict(torch_bridge.to_torch_state_dict(variables))

  class Inference(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.net = net.eval()
      std = torch.tensor(input_pipeline.CIFAR10_STD)
      self.register_buffer('scale', 1 / (255 * std))
      self.register_buffer('offset', -torch.tensor(input_pipeline.CIFAR10_MEAN) / std)

    def forward(self, images):
      x = (images.float() * self.scale + self.offset).permute(0, 3, 1, 2)
      logits = self.net(x)
      return (logits + self.net(torch.flip(x, dims=[3]))) / 2 if flip_tta else logits

  out = io.BytesIO()
  torch.onnx.export(Inference(), (torch.zeros(2, 32, 32, 3, dtype=torch.uint8),), out,
                    input_names=['images'], output_names=['logits'], dynamo=False,
                    dynamic_axes={'images': {0: 'batch'}, 'logits': {0: 'batch'}})
  return out.getvalue()


def export(config, output_dir: str, workdir=None, which: str = 'latest',
           torch_checkpoint=None, stop=interrupt.NEVER) -> dict:
  """Writes the artifact, the ONNX model (when torch and onnx are installed) and the card into
  `output_dir`, replacing an earlier export there as a whole; returns the card. A signal
  (`stop`) ends it with errors.Interrupted before the folder changes."""
  target = check_output(output_dir, workdir)
  model, variables, source = inference.load_model(config, workdir, which, torch_checkpoint)
  _go_on(stop, output_dir)
  written = {ARTIFACT: jax_artifact(model, variables, config.eval_flip_tta)}
  _go_on(stop, output_dir)
  try:
    written[ONNX] = onnx_model(model, variables, config.eval_flip_tta)
  except ImportError as e:
    logging.warning('no %s: exporting to ONNX needs %s: pip install \'flax-seresnet[onnx]\'',
                    ONNX, e.name)
  _go_on(stop, output_dir)
  card = {
      'architecture': source['model'], 'classes': list(input_pipeline.CLASS_NAMES),
      'input': INPUT, 'output': 'float32 logits (N, 10), the class order of "classes"',
      'normalisation': {'inside': True, 'formula': '(x / 255 - mean) / std',
                        'mean': input_pipeline.CIFAR10_MEAN, 'std': input_pipeline.CIFAR10_STD},
      'flip_tta': config.eval_flip_tta, 'source': source['source'], 'epoch': source['epoch'],
      'test_accuracy': source['test_accuracy'], 'config': source['config'],
      'library_version': flax_seresnet.__version__, 'git_commit': identity.code_commit(),
      'config_hash': source['config_hash'],
      'jax_version': jax.__version__, 'platforms': list(PLATFORMS),
      'files': {name: hashlib.sha256(blob).hexdigest() for name, blob in written.items()}}
  written[CARD] = json.dumps(card, indent=1).encode()
  _replace(target, written, stop, output_dir)
  return card


def check_output(output_dir: str, workdir=None) -> str:
  """The real path of the folder `output_dir`, or UserError in one line when it cannot be an
  export folder: a file, under a file, the workdir, a file of the run, or a folder holding
  more than an export (the whole folder is replaced: nothing else may be lost with it)."""
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f'--output {output_dir} is not a folder: give a folder for the exported '
                    'model.')
  real = os.path.realpath(output_dir)
  above = os.path.dirname(real)
  while not os.path.lexists(above):
    above = os.path.dirname(above)
  if not os.path.isdir(above):
    raise UserError(f'--output {output_dir} lies under {above}, a file, not a folder: give a '
                    'folder for the exported model.')
  if workdir and real == os.path.realpath(workdir):
    raise UserError(f'--output {output_dir} is the workdir {workdir}: give another folder.')
  files.check_target(os.path.join(real, CARD), '--output', workdir=workdir)  # a run file
  try:
    others = sorted(name for name in (os.listdir(real) if os.path.isdir(real) else ())
                    if name not in NAMES or not _is_file(os.path.join(real, name)))
  except OSError as e:
    raise UserError(f'--output {output_dir} cannot be read {storage.describe(e)}.') from None
  if others:
    raise UserError(f'--output {output_dir} holds {others[0]!r}, which is not a file of an '
                    'export: give a new or empty folder, or an earlier export\'s, or move it '
                    'away.')
  return real


def _is_file(path: str) -> bool:
  return os.path.isfile(path) and not os.path.islink(path)


def _go_on(stop, output_dir: str) -> None:
  if stop.requested:
    raise Interrupted(f'{stop.requested} received: stopped the export; {output_dir} is as it '
                      'was.')


def _write(folder: str, name: str, blob: bytes) -> None:
  with open(os.path.join(folder, name), 'xb') as f:
    f.write(blob)
    f.flush()
    os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
  fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _replace(target: str, blobs: dict, stop, shown: str) -> None:
  """Writes `blobs` into a fresh sibling of `target`, then exchanges the two folders."""
  parent, base = os.path.split(target)
  new = None
  try:
    os.makedirs(parent, exist_ok=True)
    _clear_leftovers(parent, base)
    new = tempfile.mkdtemp(dir=parent, prefix=f'.{base}.new-{os.getpid()}-')
    os.chmod(new, 0o755)
    for name, blob in blobs.items():
      _write(new, name, blob)
    _fsync_folder(new)
    _go_on(stop, shown)
    _swap(new, target)
    _fsync_folder(parent)
  except OSError as e:
    raise UserError(f'could not write the export {shown} {storage.describe(e)}; {shown} is as '
                    'it was.') from None
  finally:
    if new:  # after the exchange: the old export
      shutil.rmtree(new, ignore_errors=True)


def _swap(new: str, target: str) -> None:
  """`new` takes the place of `target` atomically; `new` then holds the old folder (if any)."""
  if not os.path.lexists(target):
    os.rename(new, target)
    return
  try:
    _exchange(new, target)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
      raise
    # No atomic exchange here: the old folder is set aside first; if a crash falls between the
    # two renames, the next export puts it back (_clear_leftovers).
    parent, name = os.path.split(new)
    aside = os.path.join(parent, name.replace('.new-', '.old-', 1))
    os.rename(target, aside)
    try:
      os.rename(new, target)
    except OSError:
      os.rename(aside, target)
      raise
    os.rename(aside, new)


def _exchange(a: str, b: str) -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  renameat2 = getattr(libc, 'renameat2', None)
  if renameat2 is None:
    raise OSError(errno.ENOSYS, 'no renameat2')
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), b)


def _clear_leftovers(parent: str, base: str) -> None:
  """Removes what an export killed midway left beside `base` (a process that is gone); an old
  export set aside, with no export in its place, is put back first."""
  for name in sorted(os.listdir(parent), key=lambda n: '.old-' not in n):
    kind, _, rest = name[len(base) + 2:].partition('-')
    pid = rest.split('-')[0]
    if not (name.startswith(f'.{base}.') and kind in ('new', 'old') and pid.isdigit()):
      continue
    if _alive(int(pid)) or not os.path.isdir(os.path.join(parent, name)):
      continue
    if kind == 'old' and not os.path.lexists(os.path.join(parent, base)):
      os.rename(os.path.join(parent, name), os.path.join(parent, base))
    else:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True
  return pid != os.getpid()  # ours: left by an earlier process of the same number


def load(output_dir: str):
  """The exported artifact of `output_dir` (jax.export.Exported), after checking every file the
  card lists against its SHA-256; CheckpointError in one line when one is missing, truncated or
  corrupt."""
  try:
    card = read_file(os.path.join(output_dir, CARD), 'model card', 'card')
    listed = json.loads(card)['files']
    if not isinstance(listed, dict) or ARTIFACT not in listed or not set(listed) <= {
        ARTIFACT, ONNX}:
      raise ValueError(f'{CARD} lists {sorted(listed)}')
    blobs = {name: read_file(os.path.join(output_dir, name), f'exported {name}', 'model')
             for name in listed}
  except (ValueError, KeyError, TypeError) as e:  # DataError too: a ValueError
    raise CheckpointError(f'{output_dir} holds no usable exported model ({e}): export it again '
                          '(--mode export).') from None
  for name, blob in blobs.items():
    if hashlib.sha256(blob).hexdigest() != listed[name]:
      raise CheckpointError(f'{os.path.join(output_dir, name)} is truncated or corrupt (its '
                            f'SHA-256 differs from {CARD}): export it again (--mode export).')
  return jax.export.deserialize(bytearray(blobs[ARTIFACT]))
