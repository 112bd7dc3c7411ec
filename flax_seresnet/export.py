"""A trained model out of the training tool: inference as a jax.export artifact and as an ONNX
model (uint8 NHWC images in, float32 logits out, the normalisation inside, any batch size),
with a model card.

  export(config, output_dir, workdir)   writes model.jax, model.onnx and model.json
  load(output_dir)                      the artifact, checked against the card: .call(images)

ONNX goes through the PyTorch twin (reference.TorchSEResNet, the bridged weights) and
torch.onnx's TorchScript exporter: measured here against jax2onnx 0.17 on the published network
(2-core CPU), it exported in 0.5 s instead of 10.4 s, and onnxruntime ran its graph at 119
instead of 98 images/s; both gave logits equal to JAX's. The twin is the one the tests hold to
the Flax model; jax2onnx also needed flax's avg_pool called with keywords.
A jax.export artifact is a program: deserialise only artifacts from a trusted source.
"""
import hashlib
import io
import json
import os
import subprocess

import jax
import jax.numpy as jnp
from absl import logging

import flax_seresnet
import input_pipeline
from flax_seresnet import files, inference, steps
from flax_seresnet.errors import CheckpointError, UserError
from input_pipeline.files import read_file

ARTIFACT, ONNX, CARD = 'model.jax', 'model.onnx', 'model.json'
PLATFORMS = ('cpu', 'cuda')
INPUT = 'uint8 (N, 32, 32, 3), RGB, NHWC, 0..255; N any'


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
  fields = {k: getattr(model, k) for k in ('stage_blocks', 'widths', 'kernel_sizes',
                                           'shortcut_kernel_sizes', 'se_position',
                                           'se_reduction', 'preact', 'dropout',
                                           'avg_pool_kernel_size', 'num_classes')}
  net = reference.TorchSEResNet(**fields)
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


def _git_commit():
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def export(config, output_dir: str, workdir=None, which: str = 'latest',
           torch_checkpoint=None) -> dict:
  """Writes the artifact, the ONNX model (when torch and onnx are installed) and the card into
  `output_dir`; returns the card."""
  if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f'--output {output_dir} is not a folder: give a folder for the exported '
                    'model.')
  files.check_target(os.path.join(output_dir, CARD), '--output', workdir=workdir)
  model, variables, source = inference.load_model(config, workdir, which, torch_checkpoint)
  written = {ARTIFACT: jax_artifact(model, variables, config.eval_flip_tta)}
  try:
    written[ONNX] = onnx_model(model, variables, config.eval_flip_tta)
  except ImportError as e:
    logging.warning('no %s: exporting to ONNX needs %s: pip install \'flax-seresnet[onnx]\'',
                    ONNX, e.name)
  os.makedirs(output_dir, exist_ok=True)
  for name, blob in written.items():
    files.write_file(os.path.join(output_dir, name), blob, f'the exported {name}')
  card = {
      'architecture': source['model'], 'classes': list(input_pipeline.CLASS_NAMES),
      'input': INPUT, 'output': 'float32 logits (N, 10), the class order of "classes"',
      'normalisation': {'inside': True, 'formula': '(x / 255 - mean) / std',
                        'mean': input_pipeline.CIFAR10_MEAN, 'std': input_pipeline.CIFAR10_STD},
      'flip_tta': config.eval_flip_tta, 'source': source['source'], 'epoch': source['epoch'],
      'test_accuracy': source['test_accuracy'], 'config': source['config'],
      'library_version': flax_seresnet.__version__, 'git_commit': _git_commit(),
      'jax_version': jax.__version__, 'platforms': list(PLATFORMS),
      'files': {name: hashlib.sha256(blob).hexdigest() for name, blob in written.items()}}
  files.write_file(os.path.join(output_dir, CARD), json.dumps(card, indent=1), 'the model card')
  return card


def load(output_dir: str):
  """The exported artifact of `output_dir` (jax.export.Exported), after checking it against the
  card's SHA-256; CheckpointError in one line when it is missing, truncated or corrupt."""
  path = os.path.join(output_dir, ARTIFACT)
  try:
    card = read_file(os.path.join(output_dir, CARD), 'model card', 'card')
    expected = json.loads(card)['files'][ARTIFACT]
    blob = read_file(path, 'exported model', 'model')
  except (ValueError, KeyError, TypeError) as e:  # DataError too: a ValueError
    raise CheckpointError(f'{output_dir} holds no usable exported model ({e}): export it again '
                          '(--mode export).') from None
  if hashlib.sha256(blob).hexdigest() != expected:
    raise CheckpointError(f'{path} is truncated or corrupt (its SHA-256 differs from '
                          f'{CARD}): export it again (--mode export).')
  return jax.export.deserialize(bytearray(blob))
