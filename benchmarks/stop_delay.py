"""How fast a Ctrl-C stops training, and whether the early estimate agrees with the progress
bar, measured on the published network as a user meets it: main.py on a terminal (a pty of 120
columns, through `script`), Ctrl-C typed on that terminal once the estimate is out.

  python benchmarks/stop_delay.py [--config configs/seresnet.py] [main.py flags ...]

Prints the estimate, tqdm's last rate, the seconds from SIGINT to its acknowledgement and to the
exit, and the exit code. Uses $CIFAR10_DATA_DIR (or the config's data_dir).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  flags = argv or ['--config', 'configs/seresnet.py']
  workdir = tempfile.mkdtemp(prefix='stop_delay_')
  command = ' '.join([f'stty cols 120 rows 40; exec {sys.executable} main.py',
                      *[f"'{a}'" for a in flags], f'--workdir={workdir}/run'])
  process = subprocess.Popen(['script', '-qec', command, '/dev/null'], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
  screen, sent, acknowledged = b'', None, None
  os.set_blocking(process.stdout.fileno(), False)
  while process.poll() is None:
    chunk = process.stdout.read() or b''
    screen += chunk
    if sent is None and b'about ' in screen and b' s a step' in screen.split(b'about ')[-1]:
      time.sleep(5)  # the bar's rate settles
      screen += process.stdout.read() or b''
      sent = time.monotonic()
      process.stdin.write(b'\x03')  # Ctrl-C typed on the terminal: its line discipline
      process.stdin.flush()          # sends SIGINT to the foreground job
    if sent and acknowledged is None and b'received: stopping' in screen:
      acknowledged = time.monotonic()
    time.sleep(0.05)
  exited = time.monotonic()
  screen += process.stdout.read() or b''
  text = screen.decode(errors='replace')
  rates = re.findall(r'([\d.]+)(s/it|it/s)', text)
  estimate = re.search(r'about ([\d.e+-]+) s a step', text)
  print(f'estimate: {estimate.group(1) if estimate else "none"} s a step; the bar\'s last rate: '
        f'{"".join(rates[-1]) if rates else "none"}')
  if sent:
    heard = f'{acknowledged - sent:.1f} s' if acknowledged else 'never'
    print(f'SIGINT -> acknowledged {heard}, exited {exited - sent:.1f} s, exit code '
          f'{process.returncode}')
  lines = [line for line in text.splitlines() if 'received' in line or 'interrupted' in line]
  print('\n'.join(lines[-3:]))


if __name__ == '__main__':
  main(sys.argv[1:])
