"""Downloading the official CIFAR-10 tarball: MD5-checked, safely extracted, moved in whole.

All happens in a temporary folder beside the target, removed on any failure; the finished folder
is then renamed into place, which is atomic as it stays on one file system.
"""
import hashlib
import http.client
import os
import pathlib
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib

import tqdm

from input_pipeline.errors import DataError, one_line
from input_pipeline.files import LIMITS, read_file, size_text

OFFICIAL_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
OFFICIAL_MD5 = 'c58f30108f718f92721af3b95e74349a'
ARCHIVE_FOLDER = 'cifar-10-batches-py'  # the tarball's top folder, whose contents are wanted
REQUIRED_FILES = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch',)


def download_cifar10(data_dir: str | os.PathLike[str], url: str = OFFICIAL_URL,
                     md5: str = OFFICIAL_MD5, *, progress: bool = True,
                     timeout: float = 60.0) -> pathlib.Path:
  """Downloads CIFAR-10 (python version) into the new folder `data_dir`; returns it, absolute.

  `url` (http, https or file) must have the MD5 `md5`; `timeout` is in seconds, per read.
  Raises DataError when `data_dir` exists or the download, checksum or archive is bad; then
  `data_dir` still does not exist and no temporary is left.
  """
  target = pathlib.Path(data_dir).absolute()
  if target.exists():
    raise DataError(f'download target {target} already exists: delete it to download again, '
                    'or set download=False to use it')
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot create the folder {target.parent} ({one_line(e)}): create it '
                    'yourself or choose another data folder') from None
  with tempfile.TemporaryDirectory(prefix=f'.{target.name}.', dir=target.parent) as tmp:
    archive, extracted = os.path.join(tmp, 'archive'), os.path.join(tmp, 'extracted')
    digest = _fetch(url, archive, target, progress=progress, timeout=timeout)
    if digest != md5.lower():
      raise DataError(f'the file downloaded from {url} has MD5 {digest}, expected {md5}: the '
                      f'download is corrupt or the server sent another file; retry, or put the '
                      f'python-version batches into {target} by hand')
    try:
      with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter=_data_without_links)
    except tarfile.FilterError as e:
      raise DataError(f'the archive from {url} is refused: {one_line(e)}; only plain files and '
                      f'folders inside it are extracted; use {OFFICIAL_URL}') from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
      raise DataError(f'the archive from {url} is corrupt or not a tar.gz ({one_line(e)}): '
                      f'retry, or download {OFFICIAL_URL} by hand') from None
    source = pathlib.Path(extracted, ARCHIVE_FOLDER)
    missing = [f for f in REQUIRED_FILES if not (source / f).is_file()]
    if missing:
      raise DataError(f'the archive from {url} lacks {ARCHIVE_FOLDER}/{missing[0]}: it is not '
                      f'the CIFAR-10 python-version tarball; use {OFFICIAL_URL}')
    try:
      os.rename(source, target)
    except OSError as e:
      raise DataError(f'cannot move the extracted files to {target} ({one_line(e)}): check '
                      'that it does not exist and that its parent folder is writable') from None
  return target


def _data_without_links(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
  """tarfile's 'data' filter (no device, no path out of `dest`) that refuses links too."""
  if member.issym() or member.islnk():
    raise tarfile.FilterError(f'{member.name!r} is a link')
  return tarfile.data_filter(member, dest)


def _fetch(url: str, path: str, target: pathlib.Path, *, progress: bool, timeout: float) -> str:
  """Streams `url` into the file `path`, at most LIMITS['download'] bytes; returns its MD5 hex
  digest."""
  md5, received = hashlib.md5(), 0
  if urllib.parse.urlparse(url).scheme == 'file':  # a FIFO would block, /dev/zero never end
    read_file(urllib.request.url2pathname(urllib.parse.urlparse(url).path), 'download', 'download',
              head=0)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, 'wb') as out:
      length = response.headers.get('Content-Length')
      expected = int(length) if length and length.isdigit() else None
      with tqdm.tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=f'Downloading {url}', disable=not progress) as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          md5.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
          if received > LIMITS['download']:
            raise DataError(f'the download from {url} goes on past {size_text(LIMITS["download"])}'
                            f': it is not the CIFAR-10 tarball (163 MiB); use {OFFICIAL_URL}')
  except urllib.error.HTTPError as e:
    reason = f'HTTP {e.code} {e.reason}'
  except urllib.error.URLError as e:
    reason = e.reason
  except (http.client.HTTPException, OSError) as e:  # cut short (IncompleteRead), timeouts, ...
    reason = f'{type(e).__name__}: {e}'
  else:
    # A short body is not always an IncompleteRead (file: URLs, some servers): count it too.
    if expected is None or received == expected:
      return md5.hexdigest()
    reason = f'received {received} of {expected} bytes'
  raise DataError(f'could not download {url} ({one_line(reason)}): download {OFFICIAL_URL} '
                  f'yourself and extract it so that {target} holds data_batch_1..5 and test_batch '
                  f'(the contents of its {ARCHIVE_FOLDER}/ folder)')
