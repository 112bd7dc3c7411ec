"""The exceptions that end a run with one line and a documented exit code (input_pipeline raises
its own DataError, exit 2); any other exception is a bug and keeps its traceback."""
from input_pipeline.errors import DataError, one_line  # noqa: F401  (one place for both)


class UserError(Exception):
  """A setting, file, folder or disk that cannot work; the message names it and says what to
  do."""
  exit_code = 2


class ConfigError(UserError, ValueError):
  """A bad setting (a config key, a flag)."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be used or written: missing, damaged, of another config, or a
  full disk."""


class TrainingDiverged(UserError, RuntimeError):
  """The loss or the parameters became NaN or infinite."""
  exit_code = 3


class Interrupted(UserError):
  """A signal stopped the run after saving what it could; the same command resumes it."""
  exit_code = 75  # EX_TEMPFAIL: a scheduler may requeue the job
  prefix = 'interrupted'


ERRORS = (UserError, DataError)  # what the command line reports as one line
