"""Every mode Pillow opens becomes the same 8-bit RGB: each case is generated from one content
(gray levels, colours, transparent areas) and must read back as that content within rounding;
EXIF orientations read upright; GIF and TIFF content is read whatever the name; --input is an
image or a pickle by its content, never by a guess."""
import io

import numpy as np
import pytest
from PIL import Image

from input_pipeline import DataError, images as image_files
from tests import fake_data

LEVELS = np.array([[0, 64], [128, 255]], np.uint8).repeat(16, 0).repeat(16, 1)  # (32, 32)
COLOURS = np.array([[[128, 128, 128], [200, 30, 40]], [[20, 90, 220], [250, 250, 10]]],
                   np.uint8).repeat(16, 0).repeat(16, 1)  # (32, 32, 3)
HALF = np.zeros((32, 32), bool)
HALF[:16, :16] = True  # the transparent quarter of the transparency cases
WHITE = 255


def encode(image, fmt, **options) -> bytes:
  out = io.BytesIO()
  image.save(out, fmt, **options)
  return out.getvalue()


def gray3(levels):
  return np.repeat(levels[..., None], 3, -1)


def with_white(colours, transparent):
  return np.where(transparent[..., None], WHITE, colours).astype(np.uint8)


def palette(colours):
  return Image.fromarray(colours).quantize(colors=8, method=Image.Quantize.MEDIANCUT)


def p_transparent(fmt='PNG', transparency=4):
  """The four colours as palette entries 0..3; entry 4, transparent, holds a visible colour."""
  colours = COLOURS[::16, ::16].reshape(4, 3)
  indices = np.arange(4, dtype=np.uint8).reshape(2, 2).repeat(16, 0).repeat(16, 1)
  indices[HALF] = 4
  image = Image.fromarray(indices, 'P')
  image.putpalette([*colours.ravel().tolist(), 200, 30, 40])
  return encode(image, fmt, transparency=transparency)


def la():
  return encode(Image.fromarray(np.dstack([LEVELS, np.where(HALF, 0, 255).astype(np.uint8)]),
                                'LA'), 'PNG')


def rgba_half_alpha():  # alpha 128 everywhere: half the colour, half white
  return encode(Image.fromarray(np.dstack([COLOURS, np.full((32, 32), 128, np.uint8)])), 'PNG')


def tiff_16(mode, dtype):
  return encode(Image.frombytes(mode, (32, 32), (LEVELS.astype(dtype) * 257).tobytes()), 'TIFF')


def png_16_transparent():  # tRNS marks one 16-bit sample value transparent
  data = LEVELS.astype(np.uint16) * 257
  data[HALF] = 1000
  return encode(Image.fromarray(data), 'PNG', transparency=1000)


# name: (the file's bytes, the RGB it must read as, tolerance)
CASES = {
    '1': (lambda: encode(Image.fromarray(LEVELS >= 128), 'PNG'),
          gray3(np.where(LEVELS >= 128, 255, 0)), 0),
    'L': (lambda: encode(Image.fromarray(LEVELS), 'PNG'), gray3(LEVELS), 0),
    'I;16 png': (lambda: encode(Image.fromarray(LEVELS.astype(np.uint16) * 257), 'PNG'),
                 gray3(LEVELS), 0),
    'I;16 tiff': (lambda: tiff_16('I;16', '<u2'), gray3(LEVELS), 0),
    'I;16B tiff': (lambda: tiff_16('I;16B', '>u2'), gray3(LEVELS), 0),
    'I tiff': (lambda: encode(Image.fromarray(LEVELS.astype(np.int32) * 257), 'TIFF'),
               gray3(LEVELS), 0),
    'F tiff 0..1': (lambda: encode(Image.fromarray(LEVELS.astype(np.float32) / 255), 'TIFF'),
                    gray3(LEVELS), 0),
    'I;16 png tRNS': (png_16_transparent, with_white(gray3(LEVELS), HALF), 0),
    'LA': (la, with_white(gray3(LEVELS), HALF), 0),
    'RGB': (lambda: encode(Image.fromarray(COLOURS), 'PNG'), COLOURS, 0),
    'P': (lambda: encode(palette(COLOURS), 'PNG'), COLOURS, 0),
    'P transparent': (p_transparent, with_white(COLOURS, HALF), 0),
    'P alpha palette': (lambda: p_transparent(transparency=bytes([255, 255, 255, 255, 0])),
                        with_white(COLOURS, HALF), 0),  # an alpha for each entry
    'GIF transparent': (lambda: p_transparent('GIF'), with_white(COLOURS, HALF), 0),
    'RGBA': (lambda: encode(Image.fromarray(np.dstack([COLOURS, np.where(HALF, 0, 255)
                                                       .astype(np.uint8)])), 'PNG'),
             with_white(COLOURS, HALF), 0),
    'RGBA alpha 128': (rgba_half_alpha, np.rint(COLOURS * (128 / 255) + WHITE * (127 / 255)), 1),
    'CMYK tiff': (lambda: encode(Image.fromarray(COLOURS).convert('CMYK'), 'TIFF'), COLOURS, 0),
    'CMYK jpeg': (lambda: encode(Image.fromarray(COLOURS).convert('CMYK'), 'JPEG', quality=100),
                  COLOURS, 3),
    'YCbCr tiff': (lambda: encode(Image.fromarray(COLOURS).convert('YCbCr'), 'TIFF'), COLOURS,
                   3),  # two conversions in Pillow's 8-bit fixed point
    'GIF': (lambda: encode(Image.fromarray(COLOURS), 'GIF'), COLOURS, 0),
    'BMP': (lambda: encode(Image.fromarray(COLOURS), 'BMP'), COLOURS, 0),
    'WebP lossless': (lambda: encode(Image.fromarray(COLOURS), 'WEBP', lossless=True), COLOURS,
                      0),
}


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('name', ['x.png', 'x.gif', 'x.tiff'])  # the content decides, not the name
def test_every_mode_reads_as_the_same_rgb(tmp_path, case, name):
  make, expected, tolerance = CASES[case]
  (tmp_path / name).write_bytes(make())
  got = image_files.read_image(tmp_path / name)
  assert got.dtype == np.uint8 and got.shape == (32, 32, 3)
  np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0, err_msg=case)


def test_floats_and_ints_outside_their_range_are_clipped_not_wrapped(tmp_path):
  floats = np.array([[-1.0, 0.5], [2.0, np.nan]], np.float32).repeat(16, 0).repeat(16, 1)
  (tmp_path / 'f.tiff').write_bytes(encode(Image.fromarray(floats), 'TIFF'))
  np.testing.assert_array_equal(image_files.read_image(tmp_path / 'f.tiff')[::16, ::16, 0],
                                [[0, 128], [255, 0]])
  ints = np.array([[-5, 257 * 100], [70000, 65535]], np.int32).repeat(16, 0).repeat(16, 1)
  (tmp_path / 'i.tiff').write_bytes(encode(Image.fromarray(ints), 'TIFF'))
  np.testing.assert_array_equal(image_files.read_image(tmp_path / 'i.tiff')[::16, ::16, 0],
                                [[0, 100], [255, 255]])


# How each EXIF orientation stores an upright picture (EXIF 2.32, tag 0x0112).
STORED = {1: lambda u: u, 2: np.fliplr, 3: lambda u: np.rot90(u, 2), 4: np.flipud,
          5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1),
          7: lambda u: np.rot90(u, 2).transpose(1, 0, 2), 8: lambda u: np.rot90(u, -1)}


def with_orientation(pixels, orientation, fmt, **options):
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encode(Image.fromarray(np.ascontiguousarray(pixels)), fmt, exif=exif, **options)


@pytest.mark.parametrize('orientation', STORED)
def test_every_exif_orientation_reads_upright(tmp_path, orientation):
  upright = COLOURS.copy()
  upright[:4, 16:] = 0  # a dark band at the top right: no orientation maps it onto itself
  stored = STORED[orientation](upright)
  (tmp_path / 'x.png').write_bytes(with_orientation(stored, orientation, 'PNG'))
  np.testing.assert_array_equal(image_files.read_image(tmp_path / 'x.png'), upright)
  # A phone's JPEG: portrait, stored sideways; compared by the mean of each quarter.
  tall = np.repeat(upright, 2, 0)  # 64 x 32: the central square after turning upright
  (tmp_path / 'x.jpg').write_bytes(with_orientation(STORED[orientation](tall), orientation,
                                                    'JPEG', quality=95))
  got = image_files.read_image(tmp_path / 'x.jpg').astype(float)
  quarters = lambda a: a.reshape(2, 16, 2, 16, 3).mean((1, 3))  # noqa: E731
  np.testing.assert_allclose(quarters(got), quarters(upright[8:24].repeat(2, 0).astype(float)),
                             atol=12)


def test_folders_take_gif_and_tiff_files(tmp_path):
  for name in ('a.gif', 'b.tif', 'c.TIFF', 'd.png', 'e.txt'):
    (tmp_path / name).write_bytes(b'')
  assert [p.name for p in image_files.image_paths(tmp_path)] == ['a.gif', 'b.tif', 'c.TIFF',
                                                                  'd.png']


def pickled(path):
  fake_data.write_pickle(path, {'data': np.zeros((1, 3072), np.uint8), 'ids': [0]})
  return path.read_bytes()


@pytest.mark.parametrize('content,name,kind', [
    *[(fmt, name, 'images') for fmt in ('PNG', 'GIF', 'JPEG', 'BMP', 'TIFF', 'WEBP')
      for name in ('x.png', 'x.gif', 'x.pkl', 'x')],  # an image by its content, any name
    *[('pickle', name, 'pickle') for name in ('x.pkl', 'x.pickle', 'x', 'x.bin', 'x.gif')],
    ('text', 'x.pkl', 'pickle'),  # named a pickle: the safe unpickler says what is wrong
    ('text', 'x.gif', 'images'),  # named an image: read_image says what is wrong
    ('text', 'x', None), ('text', 'x.csv', None), ('empty', 'x', None)])
def test_an_input_is_images_or_a_pickle_by_content_then_name(tmp_path, content, name, kind):
  path = tmp_path / name
  if content == 'pickle':
    pickled(path)
  elif content in ('text', 'empty'):
    path.write_text('' if content == 'empty' else 'ID,Labels\n0,1\n')
  else:
    path.write_bytes(encode(Image.fromarray(COLOURS), content))
  if kind:
    assert image_files.input_kind(path) == kind
  else:
    with pytest.raises(DataError, match=f'--input {path} is neither an image') as raised:
      image_files.input_kind(path)
    assert '\n' not in str(raised.value)
