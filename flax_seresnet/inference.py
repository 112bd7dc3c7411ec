"""Using a trained model: load it (a workdir's checkpoint or an original PyTorch .pth), evaluate
it on the test set, and predict labels for unlabeled images into a CSV.

  evaluate(config, workdir)                 test loss and accuracy (%) of a saved model
  evaluator(config, model, variables, n)    the same evaluation for any n uint8 images + labels
  predict(config, input, output, workdir)   ID,Labels predictions for an unlabeled pickle
"""
import csv
import functools
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

import input_pipeline
from flax_seresnet import checkpointing, files, identity, interrupt, parallel, steps
from flax_seresnet import config as config_lib
from flax_seresnet.errors import CheckpointError, ConfigError, Interrupted
from flax_seresnet.model import model_from_config


def run_batches(dp, plan, step_fn, variables, data, progress: bool, stop=interrupt.NEVER):
  """`step_fn(variables, data, indices, mask)` over the evaluation batches of `plan`: this
  process's copies of the outputs, batch by batch. The one loop of every evaluation."""
  outputs = []
  for indices, mask in tqdm(plan.eval_batches(), total=-(-plan.num_test // plan.eval_size),
                            desc='evaluating', disable=None if progress else True, leave=False,
                            mininterval=1.0, dynamic_ncols=True):
    if stop.requested:
      raise Interrupted(f'{stop.requested} received: stopped the evaluation; nothing written.')
    outputs.append(dp.local(step_fn(variables, data, dp.shard(plan.local(indices)),
                                    dp.shard(plan.local(mask)))))
  return outputs


def _check_finite(variables: dict, source: str):
  flat = jax.tree.leaves(variables)
  if not all(np.all(np.isfinite(np.asarray(x))) for x in flat):
    raise CheckpointError(f'the model of {source} holds NaN or infinite weights: it cannot '
                          'predict; use another checkpoint.')


def load_model(config, workdir=None, which: str = 'latest', torch_checkpoint=None):
  """(model, variables, card) of a saved run's checkpoint or of an original PyTorch checkpoint;
  `card` says where the model comes from. Logs which one and which model config it uses."""
  if torch_checkpoint:
    model, variables, card = _from_torch(config, torch_checkpoint)
  else:
    model, variables, card = _from_workdir(config, workdir, which)
  _check_finite(variables, card['source'])
  if model.num_classes != config_lib.NUM_CLASSES:
    raise CheckpointError(f'the model of {card["source"]} has {model.num_classes} classes; '
                          f'CIFAR-10 has {config_lib.NUM_CLASSES}: use a CIFAR-10 model.')
  return model, variables, card


def _from_torch(config, path):
  from flax_seresnet import torch_bridge
  state_dict = torch_bridge.read_state_dict(path)
  fields = torch_bridge.infer_model_config(state_dict)
  logging.info('model: PyTorch checkpoint %s; architecture from its shapes: %s', path, fields)
  model = model_from_config(fields, dtype=config.model.dtype)
  card = {'source': f'PyTorch checkpoint {path}', 'model': fields, 'epoch': None,
          'test_accuracy': None, 'config': config.name, 'config_hash': None}  # not trained here
  return model, torch_bridge.load_torch_checkpoint(state_dict, model), card


def _from_workdir(config, workdir, which):
  if not workdir:
    raise ConfigError('give --workdir (a training run) or --torch_checkpoint PATH.')
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise CheckpointError(f'--workdir {workdir} holds no checkpoints: train first, or give '
                          'another --workdir or --torch_checkpoint PATH.')
  with checkpointing.Checkpoints(workdir, read_only=True) as checkpoints:
    saved = ml_collections.ConfigDict(checkpoints.restore({}, which)[1]['config'])
    model = model_from_config(saved.model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    template = checkpointing.model_template(
        jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), dict(shapes)), saved.ema_decay > 0)
    items, meta = checkpoints.restore({'model': template}, which)
  accuracy = (meta['history'][-1:] or [{}])[0].get('test_accuracy')
  logging.info('model: epoch %d of %s (%s checkpoint, test accuracy %s), with the model config '
               'saved there: %s', meta['epoch'], workdir, which,
               'not measured' if accuracy is None else accuracy, saved.model.to_dict())
  if json.dumps(config.model.to_dict()) != json.dumps(saved.model.to_dict()):  # tuples as lists
    logging.warning('the model settings of --config differ from those saved in %s; the saved '
                    'ones are used.', workdir)
  card = {'source': f'{workdir} ({which} checkpoint)', 'model': saved.model.to_dict(),
          'epoch': meta['epoch'], 'test_accuracy': accuracy, 'config': saved.name,
          'config_hash': identity.config_hash(saved)}  # the run's: its metrics.jsonl says it too
  return model, checkpointing.inference_variables(items['model']), card


def _setup(config, model, count: int):
  dp = parallel.DataParallel(config)
  plan = input_pipeline.BatchPlan(num_test=count, eval_batch_size=config.eval_batch_size,
                                  num_devices=dp.num_devices, num_processes=jax.process_count(),
                                  process_index=jax.process_index())
  return dp, plan, dict(apply_fn=model.apply, flip_tta=config.eval_flip_tta)


def evaluate(config, workdir=None, which: str = 'latest', torch_checkpoint=None,
             stop=interrupt.NEVER) -> dict:
  """Test loss and accuracy (%) of a saved model on the test set of `config`."""
  config_lib.validate(config)
  model, variables, _ = load_model(config, workdir, which, torch_checkpoint)
  images, labels = input_pipeline.load_dataset(config, splits=('test',))[2:]
  return evaluator(config, model, variables, len(labels))(images, labels, stop)


def evaluator(config, model, variables, count: int):
  """`evaluate_images(images, labels, stop, progress)`: loss, accuracy (%) and count of the
  model on `count` uint8 NHWC images and their labels. Compiled once for any number of sets of
  that size (a new step function would compile again)."""
  dp, plan, settings = _setup(config, model, count)
  step = dp.compile_eval(functools.partial(steps.eval_step, **settings))
  replicated = dp.replicate(variables)

  def evaluate_images(images, labels, stop=interrupt.NEVER, progress=None) -> dict:
    sums = run_batches(dp, plan, step, replicated,
                       dp.replicate({'images': images, 'labels': labels}),
                       config.progress_bar if progress is None else progress, stop)
    totals = {k: float(jnp.stack([s[k] for s in sums]).sum()) for k in sums[0]}
    result = {'loss': totals['loss_sum'] / totals['count'],
              'accuracy': 100.0 * totals['correct'] / totals['count'],
              'count': int(totals['count'])}
    if not np.isfinite(result['loss']):
      raise CheckpointError('the test loss is NaN or infinite: the model is broken; use another '
                            'checkpoint.')
    return result
  return evaluate_images


def probabilities(config, model, variables, images: np.ndarray, stop=interrupt.NEVER):
  """Class probabilities (N, 10) of uint8 NHWC `images`, on every device."""
  dp, plan, settings = _setup(config, model, len(images))
  step = dp.compile_eval(functools.partial(steps.predict_step, **settings))
  rows = run_batches(dp, plan, lambda v, data, indices, mask: step(v, data, indices),
                     dp.replicate(variables), dp.replicate(images), config.progress_bar, stop)
  rows = np.concatenate([np.asarray(r).reshape(-1, r.shape[-1]) for r in rows])
  return rows[:len(images)]


def _inputs(input_path: str, skipped: list):
  """(uint8 images, their names, whether they came from a pickle) of --input: images or a
  pickle by its content and name (input_pipeline.images.input_kind), never by a guess. Each
  image file skipped is logged, and its line added to `skipped`."""
  def report(line):
    skipped.append(line)
    logging.warning(line)
  if input_pipeline.images.input_kind(input_path) == 'images':
    images, paths = input_pipeline.load_images(input_path, report=report)
    return images, [str(p) for p in paths], False
  images, ids = input_pipeline.load_unlabeled(input_path)
  return images, [i.decode('latin-1') if isinstance(i, bytes) else i for i in ids.tolist()], True


def predict(config, input_path: str, output_csv: str, workdir=None, which: str = 'latest',
            torch_checkpoint=None, stop=interrupt.NEVER, top_k: int = 3, show: int = 5,
            skipped=None):
  """Writes the predictions for an unlabeled pickle (`ID,Labels`) or image files
  (`path,label,class_name,probability`) into `output_csv`. Returns (the number of rows, the
  `top_k` classes and probabilities of the first `show` inputs); the files that could not be
  read are logged, each with its reason, and added to the list `skipped` when given."""
  config_lib.validate(config)
  inputs = (*input_pipeline.images.input_files(input_path), torch_checkpoint)
  files.check_target(output_csv, '--output', protect=inputs, workdir=workdir, follow_link=True)
  images, names, from_pickle = _inputs(input_path, [] if skipped is None else skipped)
  model, variables, _ = load_model(config, workdir, which, torch_checkpoint)
  probs = probabilities(config, model, variables, images, stop)
  labels, classes = probs.argmax(-1), input_pipeline.CLASS_NAMES
  text = io.StringIO()
  writer = csv.writer(text, lineterminator='\n')  # Unix line ends, as every other file here
  if from_pickle:
    writer.writerow(['ID', 'Labels'])
    writer.writerows(zip(names, labels.tolist()))
  else:
    writer.writerow(['path', 'label', 'class_name', 'probability'])
    writer.writerows((name, int(label), classes[label], f'{probs[i, label]:.6f}')
                     for i, (name, label) in enumerate(zip(names, labels)))
  if jax.process_index() == 0:
    files.write_file(output_csv, text.getvalue(), '--output', protect=inputs, workdir=workdir,
                     follow_link=True)
  top = [(name, [(classes[c], float(probs[i, c])) for c in np.argsort(-probs[i])[:top_k]])
         for i, name in enumerate(names[:show])]
  return len(names), top if top_k else []
