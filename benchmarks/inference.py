"""Inference speed of the exported model, side by side, on whatever device is here:

  python benchmarks/inference.py              # the published network, batch 256 and 1
  python benchmarks/inference.py --small      # a tiny network (a quick check)

Rows, all from one process and the same weights: the jax.export artifact (what --mode export
writes, run through jax alone), onnxruntime on the exported ONNX model (CPU execution provider),
and PyTorch eager on the twin (reference.TorchSEResNet, the bridged weights, under
torch.inference_mode). Each figure is the median of timed repeats after a warm-up; images/s for
the batch, milliseconds for one image; ratios to PyTorch eager measured in the same run.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402


def timed(fn, repeats: int) -> float:
  """Median seconds of `fn()` after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def runners(small: bool):
  """{name: function(uint8 NHWC images) -> logits} for the three ways of running the model."""
  import onnxruntime as ort
  import torch
  import input_pipeline
  from flax_seresnet import SEResNet, export, reference, torch_bridge
  fields = dict(stage_blocks=(1, 1, 1), widths=(16, 32, 64)) if small else {}
  model = SEResNet(**fields)
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  artifact = jax.export.deserialize(bytearray(export.jax_artifact(model, variables, False)))
  session = ort.InferenceSession(export.onnx_model(model, variables, False),
                                 providers=['CPUExecutionProvider'])
  net = reference.TorchSEResNet(**fields).eval()
  net.load_state_dict(torch_bridge.to_torch_state_dict(variables))
  mean, std = np.array(input_pipeline.CIFAR10_MEAN), np.array(input_pipeline.CIFAR10_STD)

  def torch_eager(images):
    with torch.inference_mode():
      x = torch.from_numpy(((images / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2))
      return net(x).numpy()
  return {'jax.export artifact': lambda images: np.asarray(artifact.call(images)),
          'onnxruntime (CPU)': lambda images: session.run(['logits'], {'images': images})[0],
          'PyTorch eager (twin)': torch_eager}


SMALL_NOTE = ('a tiny network at a tiny scale (--small): these ratios check the script; they '
              'measure neither framework')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--small', action='store_true', help='a tiny network (a quick check)')
  args = parser.parse_args(argv)
  images = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
  rows = {}
  for name, run in runners(args.small).items():
    rows[name] = (args.batch / timed(lambda: run(images), args.repeats),
                  1000 * timed(lambda: run(images[:1]), args.repeats * 4))
  reference = rows['PyTorch eager (twin)']
  device = jax.devices()[0].device_kind
  print(f'\nInference on {device} ({os.cpu_count()} CPUs seen), '
        f'{"small network, " + SMALL_NOTE if args.small else "published network"}, '
        f'batch {args.batch}')
  print('| runtime | images/s | vs PyTorch eager | one image, ms | vs PyTorch eager |')
  print('|---|---|---|---|---|')
  for name, (rate, latency) in rows.items():
    print(f'| {name} | {rate:,.0f} | {rate / reference[0]:.2f}x | {latency:.2f} | '
          f'{reference[1] / latency:.2f}x |')


if __name__ == '__main__':
  main()
