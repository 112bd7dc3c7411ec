"""--mode export: the jax.export artifact and the ONNX model give the library's own logits, at any
batch size, in processes that know nothing of this library; the card says what the model is; a
damaged artifact is one clear error."""
import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from flax_seresnet import export, inference, steps, train
from flax_seresnet.errors import CheckpointError
from tests import fake_data
from tests.harness import run_cli, TINY
from tests.train_helpers import tiny_config


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A tiny run, evaluated on 256 test images, exported through the command line."""
  root = tmp_path_factory.mktemp('export')
  data = fake_data.write_fake_cifar10(root / 'data', per_batch=64, test_count=256, learnable=True)
  config = tiny_config(data, num_epochs=1, eval_flip_tta=True)
  train.train_and_evaluate(config, str(root / 'run'))
  result = run_cli(*TINY, f'--config.data_dir={data}', '--config.eval_flip_tta=True',
                   f'--workdir={root / "run"}', '--mode=export', f'--output={root / "model"}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == f'exported model.jax, model.onnx and model.json to {root / "model"}\n'
  images = fake_data.make_batch(256, 6, learnable=True)['data']
  images = images.reshape(256, 3, 32, 32).transpose(0, 2, 3, 1).copy()
  model, variables, _ = inference.load_model(config, str(root / 'run'))
  library = np.asarray(jax.jit(lambda x: steps.predict_logits(model.apply, variables, x,
                                                              True))(images))
  return root, images, library


def test_the_artifact_gives_the_librarys_eval_logits_at_any_batch_size(exported):
  root, images, library = exported
  artifact = export.load(str(root / 'model'))
  for size in (1, 7, 256):
    np.testing.assert_allclose(np.asarray(artifact.call(images[:size])), library[:size],
                               rtol=1e-5, atol=1e-5)
  # The control: the same network without the normalisation inside is far off.
  model, variables, _ = inference.load_model(tiny_config(), str(root / 'run'))
  raw = np.asarray(model.apply(variables, images.astype(np.float32), train=False))
  assert np.abs(raw - library).max() > 1e-2


def test_jax_alone_runs_the_artifact(exported, tmp_path):
  root, images, library = exported
  np.save(tmp_path / 'images.npy', images[:7])
  code = ('import sys, jax, numpy as np\n'
          f'blob = open({str(root / "model" / "model.jax")!r}, "rb").read()\n'
          'logits = jax.export.deserialize(bytearray(blob)).call(np.load(sys.argv[1]))\n'
          'np.save(sys.argv[2], np.asarray(logits))\n'
          'assert not [m for m in sys.modules if m.split(".")[0] in ("flax", "flax_seresnet", '
          '"input_pipeline")], "imported the library"\n')
  result = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'images.npy'),
                           str(tmp_path / 'logits.npy')], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), library[:7], rtol=1e-5, atol=1e-5)


def test_onnx_runtime_gives_the_same_logits_at_any_batch_size(exported):
  ort = pytest.importorskip('onnxruntime')
  root, images, library = exported
  session = ort.InferenceSession(str(root / 'model' / 'model.onnx'))
  assert [i.name for i in session.get_inputs()] == ['images']
  for size in (1, 7, 256):
    logits = session.run(['logits'], {'images': images[:size]})[0]
    np.testing.assert_allclose(logits, library[:size], rtol=1e-4, atol=1e-4)


def test_the_card_says_what_the_model_is(exported):
  root, _, _ = exported
  card = json.loads((root / 'model' / 'model.json').read_text())
  history = [json.loads(line) for line in (root / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert card['architecture']['widths'] == [8, 16, 16] and card['classes'][3] == 'cat'
  assert card['epoch'] == 1 and card['test_accuracy'] == history[-1]['test_accuracy']
  assert card['config'] == 'tiny' and card['flip_tta'] is True
  assert card['normalisation']['mean'] == [0.4914, 0.4822, 0.4465]
  assert card['input'].startswith('uint8 (N, 32, 32, 3)') and card['platforms'] == ['cpu', 'cuda']
  assert card['library_version'] == '0.2.0' and re.fullmatch(
      r'[0-9a-f]{40}(-dirty)?|v0\.2\.0', card['git_commit'])
  assert card['config_hash'] == history[-1]['config_hash']  # the trained run's
  assert sorted(card['files']) == ['model.jax', 'model.onnx']


@pytest.mark.parametrize('damage', ['truncated', 'flipped', 'missing', 'no card', 'onnx flipped',
                                    'onnx missing'])
def test_a_damaged_artifact_is_one_clear_error(exported, tmp_path, damage):
  import shutil
  folder = shutil.copytree(exported[0] / 'model', tmp_path / 'model')
  blob = (folder / 'model.jax').read_bytes()
  if damage == 'truncated':
    (folder / 'model.jax').write_bytes(blob[:len(blob) // 2])
  elif damage == 'flipped':
    (folder / 'model.jax').write_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
  elif damage == 'missing':
    (folder / 'model.jax').unlink()
  elif damage == 'onnx flipped':  # the card covers every file, not only the artifact
    onnx = (folder / 'model.onnx').read_bytes()
    (folder / 'model.onnx').write_bytes(onnx[:100] + bytes([onnx[100] ^ 1]) + onnx[101:])
  elif damage == 'onnx missing':
    (folder / 'model.onnx').unlink()
  else:
    (folder / 'model.json').unlink()
  with pytest.raises(CheckpointError, match='export it again') as raised:
    export.load(str(folder))
  assert '\n' not in str(raised.value)


def test_export_from_an_original_pytorch_checkpoint(tmp_path):
  torch = pytest.importorskip('torch')
  from flax_seresnet.reference import TorchSEResNet
  torch.manual_seed(0)
  net = TorchSEResNet(stage_blocks=(1, 1, 1), widths=(8, 16, 16))
  torch.save({'net': {f'module.{k}': v for k, v in net.state_dict().items()}},
             tmp_path / 'ckpt.pth')
  result = run_cli('--config', 'configs/smoke.py', '--mode=export',
                   f'--torch_checkpoint={tmp_path / "ckpt.pth"}', f'--output={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr[-3000:]
  card = json.loads((tmp_path / 'out' / 'model.json').read_text())
  assert card['source'] == f'PyTorch checkpoint {tmp_path / "ckpt.pth"}' and card['epoch'] is None
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  with torch.no_grad():
    x = torch.from_numpy(((images / 255 - np.array([0.4914, 0.4822, 0.4465])) /
                          np.array([0.2023, 0.1994, 0.2010])).transpose(0, 3, 1, 2)).float()
    expected = net.eval()(x).numpy()
  got = np.asarray(export.load(str(tmp_path / 'out')).call(images))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
