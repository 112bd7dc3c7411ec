"""The exceptions that mean "the input is wrong". The command line prints them as one line
(no traceback) and exits with their `exit_code`; any other exception is a bug and keeps its
traceback."""


class UserError(Exception):
  """A setting, file or folder that cannot work; the message names it and says what to do."""
  exit_code = 2


class ConfigError(UserError, ValueError):
  """A bad setting (a config key, a flag)."""


class DataError(UserError, ValueError):
  """A dataset file, folder or download that cannot be used."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be used: missing, damaged, or of another config or architecture."""


class TrainingDiverged(UserError, RuntimeError):
  """The loss or the parameters became NaN or infinite."""
  exit_code = 3


def one_line(text: object) -> str:
  """Collapses `text` (e.g. a wrapped exception's message) onto one line."""
  return ' '.join(str(text).split())
