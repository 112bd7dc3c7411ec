"""The command line: `python main.py --help` (the same as the installed `flax-seresnet`).

The flags, the modes and the exit codes live in flax_seresnet/cli.py.
"""
from flax_seresnet import cli


def run():
  """The console script `flax-seresnet` (pip install puts it on PATH)."""
  cli.run()


if __name__ == '__main__':
  run()
