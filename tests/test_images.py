"""--mode predict on ordinary image files: the formats, folders and lists; grayscale, alpha and
other sizes; bad files one line each and skipped; the same images as PNG files predict exactly
what the pickle path predicts; the top classes on stdout."""
import csv

import pathlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from flax_seresnet import inference, train
from input_pipeline import DataError, images as image_files, load_unlabeled
from tests import fake_data
from tests.conftest import REAL_CIFAR10
from tests.harness import TINY, run_cli
from tests.train_helpers import tiny_config


@pytest.fixture(scope='module')
def trained(learnable_cifar10_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('images')
  train.train_and_evaluate(tiny_config(learnable_cifar10_dir, num_epochs=1), str(workdir))
  return workdir


@pytest.fixture(scope='module')
def test_images(learnable_cifar10_dir):
  """64 test images: the real ones when the data is here, generated ones otherwise."""
  folder = REAL_CIFAR10 if (REAL_CIFAR10 / 'test_batch').exists() else learnable_cifar10_dir
  batch = fake_data.pickle.load(open(folder / 'test_batch', 'rb'), encoding='bytes')
  data = batch[b'data' if b'data' in batch else 'data'][:64]
  return np.asarray(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def read_csv(path):
  return list(csv.reader(open(path)))


def test_png_files_predict_exactly_what_the_pickle_predicts(trained, test_images, tmp_path):
  hidden = tmp_path / 'hidden.pkl'
  fake_data.write_pickle(hidden, {b'data': test_images.transpose(0, 3, 1, 2).reshape(64, -1),
                                  b'ids': list(range(64))})
  folder = tmp_path / 'pngs'
  for i, image in enumerate(test_images):  # nested folders: searched recursively, sorted
    (folder / f'part{i // 32}').mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f'part{i // 32}' / f'{i:03d}.png')
  config = tiny_config()
  inference.predict(config, str(hidden), str(tmp_path / 'pickle.csv'), str(trained))
  inference.predict(config, str(folder), str(tmp_path / 'files.csv'), str(trained))
  from_pickle, from_files = read_csv(tmp_path / 'pickle.csv'), read_csv(tmp_path / 'files.csv')
  assert from_files[0] == ['path', 'label', 'class_name', 'probability']
  assert [r[1] for r in from_files[1:]] == [r[1] for r in from_pickle[1:]]
  assert [pathlib.Path(r[0]).name for r in from_files[1:]] == [f'{i:03d}.png' for i in range(64)]
  model, variables, _ = inference.load_model(config, str(trained))
  probs = inference.probabilities(config, model, variables, load_unlabeled(hidden)[0])
  assert [float(r[3]) for r in from_files[1:]] == pytest.approx(probs.max(-1), abs=1e-6)
  assert [r[2] for r in from_files[1:]] == [('airplane', 'automobile', 'bird', 'cat', 'deer',
                                             'dog', 'frog', 'horse', 'ship', 'truck')[int(r[1])]
                                            for r in from_files[1:]]


@pytest.mark.parametrize('mode,size,suffix', [
    ('RGB', (32, 32), '.jpg'), ('RGB', (32, 32), '.bmp'), ('RGB', (32, 32), '.webp'),
    ('L', (32, 32), '.png'), ('RGBA', (32, 32), '.png'), ('P', (32, 32), '.png'),
    ('RGB', (640, 480), '.jpg'), ('RGB', (20, 50), '.png')])
def test_formats_modes_and_sizes_become_32x32_rgb_as_stated(tmp_path, mode, size, suffix):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size[::-1] + ((4,) if mode == 'RGBA' else (3,)), np.uint8)
  image = Image.fromarray(pixels).convert(mode)
  image.save(tmp_path / f'x{suffix}')
  got = image_files.read_image(tmp_path / f'x{suffix}')
  assert got.shape == (32, 32, 3) and got.dtype == np.uint8
  with Image.open(tmp_path / f'x{suffix}') as reread:
    expected = reread.convert('RGB')
  if mode == 'RGBA':  # transparency composited onto white
    alpha = pixels[..., 3:].astype(np.float64) / 255
    expected = np.rint(pixels[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    expected = Image.fromarray(expected)
  if size != (32, 32):  # the central square, Lanczos-resized
    expected = ImageOps.fit(expected, (32, 32), method=Image.Resampling.LANCZOS)
  np.testing.assert_allclose(got, np.asarray(expected), atol=1 if mode == 'RGBA' else 0)


def bomb(path):
  Image.new('1', (14000, 14000)).save(path)  # 196 M pixels: over twice Pillow's limit


def test_bad_files_are_one_line_each_and_skipped(trained, tmp_path):
  folder = tmp_path / 'in'
  folder.mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / 'a_good.png')
  good = (folder / 'a_good.png').read_bytes()
  (folder / 'b_truncated.png').write_bytes(good[:len(good) // 2])
  (folder / 'c_text.png').write_text('not an image')
  bomb(folder / 'd_bomb.png')
  (folder / 'e_dangling.png').symlink_to(tmp_path / 'nowhere.png')
  (folder / 'notes.md').write_text('not an image, and not named like one: not read')
  result = run_cli(*TINY, f'--workdir={trained}', '--mode=predict', f'--input={folder}',
                   f'--output={tmp_path / "p.csv"}', '--top_k=2')
  assert result.returncode == 0, result.stderr[-3000:]
  skipped = [line for line in result.stderr.splitlines() if 'skipped: ' in line]
  assert [line.split('skipped: ')[1].split(' ')[1] for line in skipped] == [
      str(folder / name) for name in ('b_truncated.png', 'c_text.png', 'd_bomb.png',
                                      'e_dangling.png')]
  assert 'cannot be read' in skipped[0] and 'decompression bomb' in skipped[2].lower()
  assert skipped[1].endswith(f'{folder / "c_text.png"} is not an image Pillow can read (PNG, '
                             'JPEG, BMP, WebP, GIF, TIFF)')  # the file named, not a memory copy
  assert 'does not exist' in skipped[3] and 'Traceback' not in result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2 and lines[0].startswith(f'{folder / "a_good.png"}: ')
  assert lines[0].count('%') == 2 and lines[1] == (
      f'wrote 1 predictions to {tmp_path / "p.csv"}; 4 files skipped, each named on stderr with '
      'the reason (`warning: skipped: ...`)')
  assert [r[0] for r in read_csv(tmp_path / 'p.csv')[1:]] == [str(folder / 'a_good.png')]


def test_no_usable_image_stops_with_one_line(trained, tmp_path):
  (tmp_path / 'only.png').write_text('not an image')
  with pytest.raises(DataError, match='holds no usable image'):
    inference.predict(tiny_config(), str(tmp_path / 'only.png'), str(tmp_path / 'p.csv'),
                      str(trained))
  assert not (tmp_path / 'p.csv').exists()


def test_a_list_file_names_images_relative_to_itself(trained, tmp_path):
  (tmp_path / 'sub').mkdir()
  for name in ('sub/x.png', 'y.jpg'):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / name)
  (tmp_path / 'list.txt').write_text('y.jpg\n\nsub/x.png\n')
  rows, top = inference.predict(tiny_config(), str(tmp_path / 'list.txt'),
                                str(tmp_path / 'p.csv'), str(trained), top_k=3)
  assert rows == 2 and [name for name, _ in top] == [str(tmp_path / 'y.jpg'),
                                                      str(tmp_path / 'sub' / 'x.png')]
  assert all(len(best) == 3 and best[0][1] >= best[1][1] >= best[2][1] for _, best in top)

