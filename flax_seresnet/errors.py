"""Errors that mean "the input is wrong": the command line prints them as one line."""


class ConfigError(ValueError):
  """A setting that cannot work; the message names it and says what to do."""
