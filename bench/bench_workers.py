"""Worker-process plumbing shared by the benchmarks (glow_throughput.py, resflow_bench.py).

Each benchmark runs every system in its own process: the script itself with
``--worker=NAME``, pinned to ``THREADS`` threads, talking to the parent over stdin/stdout.
A worker prints its answers as single lines ``TAG + json`` (`emit`); the parent sends
one-line commands (`WorkerProcess.request`) and reads the next tagged line back. While a
worker is timed, `cpu_probe` / `foreign_cores` measure how many cores everything else used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

THREADS = 2
TAG = "@@BENCH "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(obj) -> None:
    """Worker side: one tagged JSON line to the parent."""
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _error(e) -> str:
    """The traceback to the worker's stderr (log); a one-line message for the parent."""
    import traceback  # pylint: disable=g-import-not-at-top

    traceback.print_exc(file=sys.stderr)
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def worker_failed(e) -> int:
    """Worker side: report a set-up failure to the parent (which skips the system)."""
    emit({"ready": False, "error": _error(e)})
    return 1


def serve(commands: dict) -> int:
    """Worker side: answer the parent's one-line commands until `quit` or end of input.

    `commands[word](*arguments)` returns the dict emitted for the line `word arguments...`;
    unknown words are ignored; an exception is emitted as `{"error": ...}` and the worker
    goes on serving.
    """
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        handler = commands.get(parts[0])
        if handler is None:
            continue
        try:
            emit(handler(*parts[1:]))
        except Exception as e:  # pylint: disable=broad-except
            emit({"error": _error(e)})
    return 0


def _die_with_parent():
    """Worker pre-exec hook: SIGTERM when the parent dies (Linux), so no orphan keeps a
    core busy after an interrupted run."""
    try:
        import ctypes  # pylint: disable=g-import-not-at-top
        import signal  # pylint: disable=g-import-not-at-top

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # pylint: disable=broad-except
        pass


class WorkerProcess:
    """`script --worker=name *argv` as a subprocess pinned to THREADS threads.

    Args:
        script: path of the benchmark script the worker runs.
        name: the worker's name (``--worker=name``).
        argv: further command-line arguments.
        log_path: file for the worker's stderr (discarded when empty).
        env_extra: environment variables added for this worker.
    """

    def __init__(self, script: str, name: str, argv: list[str], log_path: str = "",
                 env_extra: dict | None = None):
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
                    "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                    "PYTHONUNBUFFERED": "1"})
        env.update(env_extra or {})
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.name = name
        self.stderr = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), f"--worker={name}"] + list(argv),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env=env, cwd=REPO, preexec_fn=_die_with_parent)

    def read(self) -> dict:
        """The worker's next tagged answer (a failure message if it exited)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return {"ready": False, "error": f"worker exited (rc={self.proc.poll()})"}
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])

    def request(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        except Exception:  # pylint: disable=broad-except
            self.proc.kill()


def fit_marker(marks: dict):
    """Keras callback stamping `marks["begin"]` / `marks["end"]` at fit's train begin and end.

    It overrides no batch hook, so Keras keeps its asynchronous callback dispatch: the loop
    runs as with no callbacks at all.
    """
    import keras  # pylint: disable=g-import-not-at-top

    class Marker(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            marks["begin"] = time.perf_counter()

        def on_train_end(self, logs=None):
            marks["end"] = time.perf_counter()

    return Marker()


def _busy_jiffies() -> int:
    """CPU jiffies the whole machine spent busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle


def _proc_jiffies(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime of all its threads


def cpu_probe(pid: int):
    """Snapshot for `foreign_cores`: machine busy time and the worker's own CPU time."""
    try:
        return _busy_jiffies(), _proc_jiffies(pid), time.perf_counter()
    except OSError:
        return None


def foreign_cores(before, pid: int) -> float:
    """Average cores used by everything but the timed worker `pid` since `before` (other
    jobs on a shared machine, plus the parent's negligible polling)."""
    after = cpu_probe(pid)
    if before is None or after is None:
        return float("nan")
    b0, w0, t0 = before
    b1, w1, t1 = after
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((b1 - b0) - (w1 - w0)) / hz / max(t1 - t0, 1e-9))
