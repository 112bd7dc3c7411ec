"""The one exception type the input pipeline raises for problems a user can fix."""


class DataError(ValueError):
  """A dataset file, folder, download or data setting is unusable.

  The message is always a single line that names the file, folder, URL or
  setting at fault and says what to do about it, so that it reads well at the
  end of a traceback and in a log.
  """


def one_line(text: object) -> str:
  """Collapses `text` (e.g. a wrapped exception's message) onto one line."""
  return ' '.join(str(text).split())
