"""Peak memory of this process, for the tests that run a loader in a fresh process."""
import resource


def peak_mb() -> float:
  """VmHWM: unlike ru_maxrss, not inherited from the parent across fork and exec."""
  try:
    with open('/proc/self/status') as status:
      return next(int(l.split()[1]) for l in status if l.startswith('VmHWM')) / 1024
  except OSError:  # not Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
