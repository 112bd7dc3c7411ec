"""Download, checksum and safe extraction, against a local HTTP server on 127.0.0.1."""
import io
import os
import signal
import socket
import tarfile

import pytest

from flax_seresnet.errors import DataError
from input_pipeline.cifar10 import load_cifar10
from input_pipeline.download import OFFICIAL_URL, download_cifar10
from tests.harness import serve


def _tarball_with(extra: list[tarfile.TarInfo], good: bytes) -> bytes:
  """The good tarball's members plus `extra` (links, escaping paths, ...)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=io.BytesIO(good), mode='r:gz') as src, \
       tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    for member in src:
      tar.addfile(member, src.extractfile(member) if member.isfile() else None)
    for info in extra:
      data = b'evil' if info.isfile() else b''
      info.size = len(data) if info.isfile() else 0
      tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
  return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = '') -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.type = kind
  info.linkname = linkname
  return info


def _assert_clean(parent, target):
  """After a failure: no target, no temporaries (the parent we made is gone too)."""
  assert not target.exists()
  assert not parent.exists() or os.listdir(parent) == []


def test_good_download(server, good_tarball, tmp_path):
  url, md5 = serve(server, 'good.tar.gz', good_tarball)
  target = tmp_path / 'data' / 'cifar'
  assert download_cifar10(target, url, md5, progress=False) == target.absolute()
  assert sorted(os.listdir(target)) == ['batches.meta', 'data_batch_1', 'data_batch_2',
                                        'data_batch_3', 'data_batch_4', 'data_batch_5',
                                        'readme.html', 'test_batch']
  assert os.listdir(tmp_path / 'data') == ['cifar']  # no temporaries left
  data = load_cifar10(target)
  assert data.train_images.shape == (20, 32, 32, 3) and data.test_labels.shape == (3,)


def test_no_length_header(server, good_tarball, tmp_path):
  url, md5 = serve(server, 'nolength.tar.gz', good_tarball, mode='no-length')
  download_cifar10(tmp_path / 'cifar', url, md5, progress=False)
  assert (tmp_path / 'cifar' / 'data_batch_5').is_file()


def test_bad_checksum(server, good_tarball, tmp_path):
  url, md5 = serve(server, 'bad-md5.tar.gz', good_tarball)
  target = tmp_path / 'data' / 'cifar'
  with pytest.raises(DataError, match='MD5') as info:
    download_cifar10(target, url, '0' * 32, progress=False)
  assert md5 in str(info.value) and '\n' not in str(info.value)
  _assert_clean(tmp_path / 'data', target)


@pytest.mark.parametrize('mode', ['short', 'half'])
def test_truncated_transfer(server, good_tarball, tmp_path, mode):
  url, md5 = serve(server, f'{mode}.tar.gz', good_tarball, mode=mode)
  parent = tmp_path / 'existing'
  parent.mkdir()
  target = parent / 'cifar'
  with pytest.raises(DataError, match='could not download') as info:
    download_cifar10(target, url, md5, progress=False)
  assert str(target) in str(info.value) and OFFICIAL_URL in str(info.value)
  _assert_clean(parent, target)
  assert parent.exists()  # a folder we did not create stays


@pytest.mark.parametrize('extra, expected', [
    ([_member('../evil')], 'outside the destination'),
    ([_member('cifar-10-batches-py/../../evil')], 'outside the destination'),
    ([_member('cifar-10-batches-py/link', tarfile.SYMTYPE, '/etc/passwd')], 'link'),
    ([_member('cifar-10-batches-py/hard', tarfile.LNKTYPE, 'cifar-10-batches-py/test_batch')],
     'link'),
    ([_member('cifar-10-batches-py/dev', tarfile.CHRTYPE)], 'special file'),
    ([_member('cifar-10-batches-py/fifo', tarfile.FIFOTYPE)], 'special file'),
    # A symlink to a folder outside, then a file written "through" it.
    ([_member('cifar-10-batches-py/out', tarfile.SYMTYPE, '../..'),
      _member('cifar-10-batches-py/out/evil')], 'link'),
], ids=['dotdot', 'nested-dotdot', 'symlink', 'hardlink', 'chardev', 'fifo', 'symlink-dir'])
def test_unsafe_members(server, good_tarball, tmp_path, extra, expected):
  url, md5 = serve(server, 'unsafe.tar.gz', _tarball_with(extra, good_tarball))
  target = tmp_path / 'data' / 'cifar'
  with pytest.raises(DataError, match=expected) as info:
    download_cifar10(target, url, md5, progress=False)
  assert '\n' not in str(info.value)
  _assert_clean(tmp_path / 'data', target)
  assert not (tmp_path / 'evil').exists()


def test_absolute_member_stays_inside(server, good_tarball, tmp_path):
  # The 'data' filter strips the leading '/': the member lands in the temporary folder.
  absolute = tmp_path / 'evil-absolute'
  url, md5 = serve(server, 'absolute.tar.gz', _tarball_with([_member(str(absolute))], good_tarball))
  download_cifar10(tmp_path / 'cifar', url, md5, progress=False)
  assert not absolute.exists() and os.listdir(tmp_path) == ['cifar']
  assert (tmp_path / 'cifar' / 'test_batch').is_file()


def test_not_a_tarball(server, tmp_path):
  url, md5 = serve(server, 'html.tar.gz', b'<html>captive portal</html>')
  target = tmp_path / 'cifar'
  with pytest.raises(DataError, match='not a tar.gz'):
    download_cifar10(target, url, md5, progress=False)
  _assert_clean(tmp_path, target)


def test_archive_without_the_batches(server, tmp_path):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    info = tarfile.TarInfo('other/readme.txt')
    info.size = 2
    tar.addfile(info, io.BytesIO(b'hi'))
  url, md5 = serve(server, 'other.tar.gz', buffer.getvalue())
  with pytest.raises(DataError, match='lacks cifar-10-batches-py/data_batch_1'):
    download_cifar10(tmp_path / 'cifar', url, md5, progress=False)
  _assert_clean(tmp_path, tmp_path / 'cifar')


def test_http_404(server, tmp_path):
  url = f'http://127.0.0.1:{server.server_address[1]}/missing.tar.gz'
  with pytest.raises(DataError, match='HTTP 404'):
    download_cifar10(tmp_path / 'cifar', url, progress=False)
  _assert_clean(tmp_path, tmp_path / 'cifar')


def test_offline(tmp_path):
  # A port nothing listens on: bind one, then close it.
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  target = tmp_path / 'data' / 'cifar'
  with pytest.raises(DataError) as info:
    download_cifar10(target, f'http://127.0.0.1:{port}/c.tar.gz', progress=False, timeout=5)
  message = str(info.value)
  assert 'could not download' in message and '\n' not in message
  assert str(target) in message and OFFICIAL_URL in message
  _assert_clean(tmp_path / 'data', target)


def test_existing_target_is_never_overwritten(server, good_tarball, tmp_path):
  url, md5 = serve(server, 'good3.tar.gz', good_tarball)
  target = tmp_path / 'cifar'
  target.mkdir()
  (target / 'keep').write_text('mine')
  with pytest.raises(DataError, match='already exists'):
    download_cifar10(target, url, md5, progress=False)
  assert os.listdir(target) == ['keep']


def test_a_download_past_its_bound_stops_in_one_line(server, good_tarball, tmp_path,
                                                     monkeypatch):
  from input_pipeline import files
  url, md5 = serve(server, 'endless.tar.gz', good_tarball)
  monkeypatch.setitem(files.LIMITS, 'download', len(good_tarball) - 1)  # a body that goes on
  target = tmp_path / 'data' / 'cifar'
  with pytest.raises(DataError, match='goes on past') as info:
    download_cifar10(target, url, md5, progress=False)
  assert '\n' not in str(info.value)
  _assert_clean(tmp_path / 'data', target)
  monkeypatch.setitem(files.LIMITS, 'download', len(good_tarball))  # the bound itself is taken
  download_cifar10(target, url, md5, progress=False)


@pytest.mark.parametrize('kind', ['fifo', 'device'])
def test_a_file_url_to_a_fifo_or_device_is_refused_at_once(tmp_path, kind):
  import stat  # pylint: disable=import-outside-toplevel
  special = tmp_path / kind
  if kind == 'fifo':
    os.mkfifo(special)
  else:  # /dev/zero's numbers, in a folder of the test's own
    if os.geteuid() != 0:
      pytest.skip('mknod needs root')
    os.mknod(special, stat.S_IFCHR | 0o666, os.makedev(1, 5))
  def too_late(*_):  # an open() blocked on the FIFO fails the test instead of hanging it
    raise TimeoutError('the download waited on the FIFO')
  previous = signal.signal(signal.SIGALRM, too_late)
  signal.alarm(20)
  try:
    with pytest.raises(DataError, match=f'download {special} is not a regular file') as info:
      download_cifar10(tmp_path / 'cifar', f'file://{special}', '0' * 32, progress=False)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  assert '\n' not in str(info.value) and not (tmp_path / 'cifar').exists()
