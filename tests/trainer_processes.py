"""Trainer processes for the crash tests, forked from a parent that has imported the trainer.

A test-sized `python -m trainers.train` run spends about 7 of its 11 s importing TensorFlow,
Keras and TFP, and the crash-resume tests start 16 of them. Here one server process per
pytest worker imports `trainers.train` once, runs no TensorFlow op (the runtime, its
thread pools and devices do not exist yet; `serve` checks), and forks a child for each run.
Each child is a new process with its own pid, its standard streams on files, Python's start-up
signal dispositions, and nothing from any earlier run: every child forks from the same
never-used server, not from another child. It runs `app.run(train.main)` with the given
arguments, as `python -m trainers.train` does, runs the exit handlers and exits with the
trainer's status; a signal ends it like any process (`returncode` -9 for SIGKILL).

What this does not test is the import itself and the `python -m` entry point: those are
covered by the genuine subprocesses of tests/test_trainer.py (`toy_run`, the bad-input
cases).

`start(argv)` returns a `Popen`-like object: `pid`, `poll()`, `send_signal()`,
`communicate(timeout)` -> (stdout, stderr), `returncode`.
"""

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ the server


def _run_child(request):
  """In the forked child: streams to files, then the trainer; never returns."""
  code = 1
  try:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
      os.dup2(fd, target)
      os.close(fd)
    os.chdir(request["cwd"])
    from absl import app  # pylint: disable=g-import-not-at-top
    from trainers import train  # pylint: disable=g-import-not-at-top
    try:
      app.run(train.main, argv=["trainers.train", *request["argv"]],
              flags_parser=train._parse_flags)  # pylint: disable=protected-access
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:   # as Python ends on an uncaught one: killed by SIGINT
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      sys.stderr.flush()
      signal.signal(signal.SIGINT, signal.SIG_DFL)
      os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # pylint: disable=broad-except
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
      code = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)  # pylint: disable=protected-access


def serve():
  """Reads one JSON request per line on stdin, forks a trainer for each, answers its pid on
  stdout; writes a child's exit status to its `status` file (atomically) when it ends. On
  end of input, kills the children still running and exits."""
  from trainers import train  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from tensorflow.python.eager import context  # pylint: disable=g-import-not-at-top
  assert not context.context()._initialized, "the server ran a TensorFlow op"  # pylint: disable=protected-access
  children = {}   # pid -> status path
  stdin = sys.stdin.buffer
  print("ready", flush=True)
  buffered = b""
  while True:
    while children:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        break
      path = children.pop(pid)
      with open(path + ".tmp", "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
      os.rename(path + ".tmp", path)
    readable, _, _ = select.select([stdin], [], [], 0.02)
    if not readable:
      continue
    chunk = os.read(stdin.fileno(), 65536)
    if not chunk:
      for pid in children:
        os.kill(pid, signal.SIGKILL)
      return
    buffered += chunk
    while b"\n" in buffered:
      line, buffered = buffered.split(b"\n", 1)
      request = json.loads(line)
      pid = os.fork()
      if pid == 0:
        _run_child(request)
      children[pid] = request["status"]
      print(pid, flush=True)


# ------------------------------------------------------------------------------ the client


class TrainerProcess:
  """One forked trainer run, used like `subprocess.Popen` with text streams."""

  def __init__(self, args, pid, paths):
    self.args, self.pid, self._paths, self.returncode = args, pid, paths, None

  def poll(self):
    if self.returncode is None and os.path.exists(self._paths["status"]):
      with open(self._paths["status"]) as f:
        self.returncode = int(f.read())
    return self.returncode

  def send_signal(self, signum):
    if self.poll() is None:
      os.kill(self.pid, signum)

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def wait(self, timeout=None):
    deadline = None if timeout is None else time.time() + timeout
    while self.poll() is None:
      if deadline is not None and time.time() > deadline:
        raise subprocess.TimeoutExpired(self.args, timeout)
      time.sleep(0.01)
    return self.returncode

  def communicate(self, timeout=None):
    try:
      self.wait(timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      self.wait()
      raise
    return tuple(open(self._paths[k]).read() for k in ("stdout", "stderr"))


class _Server:

  def __init__(self, env):
    self._dir = tempfile.mkdtemp(prefix="trainer-processes-")
    self._count = 0
    self._log = os.path.join(self._dir, "server.stderr")
    with open(self._log, "w") as log:
      self._proc = subprocess.Popen(
          [sys.executable, "-c", "from tests import trainer_processes as t; t.serve()"],
          cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
          text=True)
    ready = self._proc.stdout.readline().strip()
    assert ready == "ready", ("the trainer server did not start",
                              self._proc.poll(), open(self._log).read()[-3000:])

  def start(self, argv):
    self._count += 1
    paths = {k: os.path.join(self._dir, f"{self._count}.{k}")
             for k in ("stdout", "stderr", "status")}
    self._proc.stdin.write(json.dumps(dict(argv=list(argv), cwd=REPO, **paths)) + "\n")
    self._proc.stdin.flush()
    pid = int(self._proc.stdout.readline())
    return TrainerProcess(["trainers.train", *argv], pid, paths)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


_SERVER = []


def start(argv):
  """Starts `python -m trainers.train *argv`, forked from this worker's server (started on
  first use with this environment, TF's C++ logging at level 2 and unbuffered streams, so
  that a killed run's last lines are in its stdout file)."""
  if not _SERVER:
    _SERVER.append(_Server(dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")))
    atexit.register(_SERVER[0].close)
  return _SERVER[0].start(argv)
