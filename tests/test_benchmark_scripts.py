"""The JAX-only benchmark scripts at a tiny scale on the CPU (the GPU runs use the same code)."""
import sys

from tests.harness import REPO  # noqa: E402
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks import ablate  # noqa: E402


def test_ablate_runs_the_base_and_each_change(learnable_cifar10_dir, tmp_path, capsys):
  # The tiny config's settings: this session's compilation cache serves the train step.
  tiny = ['model.widths=(8, 16, 16)', 'train_subset=0', 'num_epochs=3', 'batch_size=64',
          'eval_batch_size=64', 'num_devices=1', 'eval_flip_tta=False']
  ablate.main(['--base', str(REPO / 'configs' / 'smoke.py'), '--out', str(tmp_path),
               '--data_dir', str(learnable_cifar10_dir), '--change', 'eval_flip_tta=True',
               *[f'--set={s}' for s in tiny]])
  table = (tmp_path / 'ablate.md').read_text().splitlines()
  assert table[2].startswith('| none (the base) | 1 | ') and '| +0.00 |' in table[2]
  assert table[3].startswith('| eval_flip_tta=True | 1 | ')
  runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
  assert runs == ['run0_seed0', 'run1_seed0']
  assert '| eval_flip_tta=True |' in capsys.readouterr().out


def test_the_inference_table_at_a_tiny_scale(capsys):
  pytest = __import__('pytest')
  pytest.importorskip('onnxruntime')
  pytest.importorskip('torch')
  from benchmarks import inference
  inference.main(['--small', '--batch', '8', '--repeats', '1'])
  table = capsys.readouterr().out.splitlines()
  assert table[-3].startswith('| jax.export artifact | ') and table[-1].startswith(
      '| PyTorch eager (twin) | ') and table[-1].count('1.00x') == 2


def test_the_jax_throughput_rows_time_the_trainers_own_step_and_loop():
  from benchmarks import throughput
  with throughput.jax_trainer('float32', 16, small=True) as trainer:
    step = throughput.jax_step_throughput(trainer, warmup=1, steps=2, repeats=1)
    assert step['img_per_s'] > 0 and step['compile_s'] > 0
    assert int(trainer.dp.to_host(trainer.state).step) == 3  # the warm-up and timed steps ran
    assert throughput.jax_epoch_throughput(trainer) > 0
