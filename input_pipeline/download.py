"""Downloading and safely extracting the official CIFAR-10 tarball.

Nothing half-written is ever left behind: the tarball is streamed into a
temporary file next to the target folder, its MD5 is checked, it is extracted
into a temporary folder next to the target (after checking every member), and
only then is the finished folder renamed into place, which is atomic because
it stays on the same file system. Any failure removes the temporaries.
"""
import hashlib
import http.client
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

import tqdm

from flax_seresnet.errors import DataError, one_line

OFFICIAL_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
OFFICIAL_MD5 = 'c58f30108f718f92721af3b95e74349a'
# The tarball holds one top-level folder; its contents become `data_dir`.
ARCHIVE_FOLDER = 'cifar-10-batches-py'
# The files the loader needs; an archive without them is refused.
REQUIRED_FILES = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch',)

_CHUNK = 1 << 20


def download_cifar10(data_dir: str | os.PathLike[str],
                     url: str = OFFICIAL_URL,
                     md5: str = OFFICIAL_MD5,
                     *,
                     progress: bool = True,
                     timeout: float = 60.0) -> pathlib.Path:
  """Downloads CIFAR-10 (python version) into the new folder `data_dir`.

  Args:
    data_dir: the folder to create; it must not exist yet. Afterwards it holds
      data_batch_1..5, test_batch, batches.meta and readme.html.
    url: where to fetch the tarball (http, https or file URL).
    md5: the tarball's expected MD5 as hex; the official one by default.
    progress: show a tqdm progress bar.
    timeout: seconds to wait for the server on connect and on each read.

  Returns:
    `data_dir` as a Path.

  Raises:
    DataError: `data_dir` already exists, the download failed or was cut
      short, the checksum does not match, or the archive holds an unsafe or
      unexpected member. `data_dir` then does not exist and no temporary file
      is left behind.
  """
  target = pathlib.Path(data_dir).absolute()
  if target.exists():
    raise DataError(f'download target {target} already exists: delete it to download again, '
                    'or set download=False to use it')
  parent = target.parent
  created = _make_parents(parent)
  archive = extract_dir = None
  try:
    fd, archive = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tar.gz.part', dir=parent)
    with os.fdopen(fd, 'wb') as out:
      digest = _fetch(url, out, target, progress=progress, timeout=timeout)
    if digest != md5.lower():
      raise DataError(f'the file downloaded from {url} has MD5 {digest}, expected {md5}: the '
                      f'download is corrupt or the server sent another file; retry, or put the '
                      f'python-version batches into {target} by hand')
    extract_dir = tempfile.mkdtemp(prefix=f'.{target.name}.', suffix='.extract', dir=parent)
    _safe_extract(archive, extract_dir, url)
    source = pathlib.Path(extract_dir, ARCHIVE_FOLDER)
    missing = [f for f in REQUIRED_FILES if not (source / f).is_file()]
    if missing:
      raise DataError(f'the archive from {url} lacks {ARCHIVE_FOLDER}/{missing[0]}: it is not the '
                      f'CIFAR-10 python-version tarball; use {OFFICIAL_URL}')
    # Same parent, hence same file system: the rename is atomic, so `target`
    # either does not exist or is complete.
    try:
      os.rename(source, target)
    except OSError as e:
      raise DataError(f'cannot move the extracted files to {target} ({one_line(e)}): check that '
                      'it does not exist and that its parent folder is writable') from None
  except BaseException:
    # Also on KeyboardInterrupt: leave no parent folders we made for nothing.
    _cleanup(archive, extract_dir)
    for folder in reversed(created):
      try:
        folder.rmdir()
      except OSError:
        break
    raise
  _cleanup(archive, extract_dir)
  return target


def _make_parents(parent: pathlib.Path) -> list[pathlib.Path]:
  """Creates `parent` and its missing ancestors; returns those created, outermost first."""
  missing = []
  folder = parent
  while not folder.exists():
    missing.append(folder)
    folder = folder.parent
  missing.reverse()
  try:
    parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot create the folder {parent} ({one_line(e)}): create it yourself or '
                    'choose another data_dir') from None
  return missing


def _cleanup(archive: str | None, extract_dir: str | None) -> None:
  if archive is not None:
    try:
      os.remove(archive)
    except FileNotFoundError:
      pass
  if extract_dir is not None:
    shutil.rmtree(extract_dir, ignore_errors=True)


def _offline_error(url: str, target: pathlib.Path, reason: str) -> DataError:
  return DataError(
      f'could not download {url} ({reason}): download {OFFICIAL_URL} yourself and extract it so '
      f'that {target} holds data_batch_1..5 and test_batch (the contents of its '
      f'{ARCHIVE_FOLDER}/ folder)')


def _fetch(url: str, out, target: pathlib.Path, *, progress: bool, timeout: float) -> str:
  """Streams `url` into the open file `out`; returns the MD5 hex digest."""
  md5 = hashlib.md5()
  received = 0
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      length = response.headers.get('Content-Length')
      expected = int(length) if length and length.isdigit() else None
      with tqdm.tqdm(total=expected, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=f'Downloading {pathlib.PurePosixPath(url).name}',
                     disable=not progress) as bar:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          md5.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
  except urllib.error.HTTPError as e:
    raise _offline_error(url, target, f'HTTP {e.code} {one_line(e.reason)}') from None
  except urllib.error.URLError as e:
    raise _offline_error(url, target, one_line(e.reason)) from None
  except http.client.IncompleteRead as e:
    raise _offline_error(url, target, f'the transfer stopped after {received + len(e.partial)} '
                         'bytes') from None
  except (http.client.HTTPException, OSError) as e:  # timeouts, resets, ...
    raise _offline_error(url, target, one_line(e) or type(e).__name__) from None
  # urllib reports a short body as IncompleteRead on most paths, but not all
  # (e.g. file: URLs, or servers without Content-Length); check anyway.
  if expected is not None and received != expected:
    raise _offline_error(url, target, f'received {received} of {expected} bytes')
  return md5.hexdigest()


def _safe_extract(archive: str, dest: str, url: str) -> None:
  """Extracts `archive` into `dest`, refusing anything but plain files and folders inside it."""
  root = os.path.realpath(dest)
  try:
    with tarfile.open(archive, 'r:*') as tar:
      # One pass: check each member before writing it. A refused member
      # aborts the whole extraction and the caller deletes `dest`.
      for member in tar:
        name = member.name
        if not (member.isfile() or member.isdir()):
          kind = 'link' if member.issym() or member.islnk() else 'special file'
          raise DataError(f'the archive from {url} holds the {kind} {name!r}, which is refused: '
                          f'only plain files and folders are extracted; use {OFFICIAL_URL}')
        parts = pathlib.PurePosixPath(name).parts
        if name.startswith(('/', '\\')) or os.path.isabs(name) or '..' in parts or (
            parts and ':' in parts[0]):
          raise DataError(f'the archive from {url} holds the member {name!r}, whose path leaves '
                          f'the target folder, which is refused; use {OFFICIAL_URL}')
        path = os.path.realpath(os.path.join(root, *parts))
        if os.path.commonpath([root, path]) != root:
          raise DataError(f'the archive from {url} holds the member {name!r}, whose path leaves '
                          f'the target folder, which is refused; use {OFFICIAL_URL}')
        if member.isdir():
          os.makedirs(path, exist_ok=True)
          continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # regular files always have contents
        # 'xb': never write through an existing entry (e.g. a duplicate name).
        with source, open(path, 'xb') as f:
          shutil.copyfileobj(source, f, _CHUNK)
  except DataError:
    raise
  except (tarfile.TarError, EOFError, OSError, ValueError) as e:
    raise DataError(f'the archive from {url} is corrupt or not a tar.gz ({one_line(e)}): retry, '
                    f'or download {OFFICIAL_URL} by hand') from None
