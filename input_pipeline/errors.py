"""The data package's errors. The command line prints a DataError as one line and exits 2."""


class DataError(ValueError):
  """A dataset file, folder, download or data setting that cannot be used; the message names it
  and says what to do."""
  exit_code = 2


def one_line(text: object) -> str:
  """Collapses `text` (e.g. a wrapped exception's message) onto one line."""
  return ' '.join(str(text).split())
