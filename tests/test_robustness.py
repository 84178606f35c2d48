"""Runs that never lose work: kill, preempt, interrupt, diverge, corrupt; then resume exactly.

Each crash test runs the trainer as a real process, interrupts it right after a given
checkpoint appears (SIGKILL, SIGTERM or SIGINT), runs the same command again, and compares
the final checkpoint's tensors (weights and optimizer state) with those of a run that was
never interrupted: they must be equal. The processes are forked from a server that has
imported the trainer (tests/trainer_processes.py: each run a fresh process, 7 s of imports
saved per run).
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import trainer_processes
from tests.test_trainer import _scalars


# name: (flags, [(signal, checkpoint after which to send it), ...]): each run of a config is
# interrupted in turn by the signals listed, then one more run finishes. SIGKILL for every
# config; SIGTERM and SIGINT, which save a checkpoint and exit, first for one config each
# (the runs resumed from their checkpoints are then killed).
CONFIGS = {
    # A coupling model on a toy density: resumes mid-epoch (step 50 of epochs of 40).
    "realnvp_moons": (["--model=realnvp", "--dataset=moons", "--steps=160", "--batch_size=64",
                       "--eval_every=40", "--checkpoint_every=25", "--num_steps=2",
                       "--hidden=16"], [(signal.SIGTERM, 50), (signal.SIGKILL, 100)]),
    # A coupling model on .npy images (dequantization noise, epochs of the file's rows).
    "glow_npy_images": (["--model=glow", "--dataset={images}", "--num_levels=1",
                         "--steps=48", "--batch_size=8", "--eval_every=16",
                         "--checkpoint_every=10", "--num_steps=1", "--hidden=8"],
                        [(signal.SIGINT, 20), (signal.SIGKILL, 30)]),
    # A residual model on .npy images (roulette seeds, power iteration, fixed-point inverse).
    "resflow_npy_images": (["--model=resflow", "--dataset={images}", "--num_levels=1",
                            "--steps=36", "--batch_size=8", "--eval_every=12",
                            "--checkpoint_every=6", "--num_steps=1", "--hidden=8"],
                           [(signal.SIGKILL, 6)]),
}
# Its uninterrupted reference run is made twice at once (two processes, same command), which
# `test_same_command_in_parallel_gives_the_same_weights` compares.
PARALLEL = "glow_npy_images"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("data") / "images.npy")
  np.save(path, np.random.RandomState(0).randint(0, 256, (40, 8, 8, 1)).astype(np.uint8))
  return path


def _flags(name, images, root):
  flags, _ = CONFIGS[name]
  return [f.format(images=images) for f in flags] + [
      f"--model_dir={root}/model", f"--export_dir={root}/export", "--overwrite"]


def _start(flags):
  """`python -m trainers.train *flags`, a new process (forked from the trainer server)."""
  return trainer_processes.start(flags)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _listed(checkpoints, step):
  """Whether the `checkpoint` index file of `checkpoints` lists ckpt-`step` (TF writes the
  data files first and this index last: only then is the checkpoint saved)."""
  try:
    with open(os.path.join(checkpoints, "checkpoint")) as f:
      return f'ckpt-{step}"' in f.read()
  except OSError:
    return False


def _interrupt_after(proc, checkpoints, step, signum):
  """Sends `signum` as soon as ckpt-`step` is saved (the run is then mid-epoch)."""
  deadline = time.time() + 240
  while not _listed(checkpoints, step):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline, "the checkpoint never appeared"
    time.sleep(0.01)
  proc.send_signal(signum)
  return _finish(proc)


def _state(root, step):
  reader = tf.train.load_checkpoint(os.path.join(root, "model", "checkpoints", f"ckpt-{step}"))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith(("model/", "optimizer/", "step/"))}


def _assert_same_state(a, b):
  assert sorted(a) == sorted(b)
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, (len(different), different[:5])


def _total_steps(name):
  return int(next(f for f in CONFIGS[name][0] if f.startswith("--steps=")).split("=")[1])


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
  """Uninterrupted runs, computed on first use: `reference(name)` is the final state of a
  config's run, `reference.copies(name)` those of every copy (two for `PARALLEL`, run at
  the same time)."""
  cache = {}

  def copies(name):
    if name not in cache:
      roots = [str(tmp_path_factory.mktemp(f"ref_{name}"))
               for _ in range(2 if name == PARALLEL else 1)]
      results = [_finish(p) for p in [_start(_flags(name, images, root)) for root in roots]]
      assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
      cache[name] = [_state(root, _total_steps(name)) for root in roots]
    return cache[name]

  def get(name):
    return copies(name)[0]
  get.copies = copies
  return get


def _check_interrupted(proc, signum, after, checkpoints, root, name):
  """The checks on a run stopped by `signum` once ckpt-`after` was saved; returns the
  latest checkpoint and its step."""
  latest = tf.train.latest_checkpoint(checkpoints)
  step = int(latest.rsplit("-", 1)[1])
  assert step < _total_steps(name)
  if signum == signal.SIGKILL:
    assert proc.returncode == -signal.SIGKILL
    return latest, step
  # One line: the step, the checkpoint written at that step, how to resume; 143 or 130.
  assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last == (f"interrupted by {signal.Signals(signum).name} at step {step}: saved "
                  f"{latest}; run the same command to resume"), proc.stderr[-3000:]
  assert step >= after
  assert not os.path.exists(os.path.join(root, "export"))
  return latest, step


# One xdist group per config (`make test` runs `--dist loadgroup`): the uninterrupted
# reference run of a config is made once, on the worker that runs all of its tests.
@pytest.mark.parametrize("name", [
    pytest.param(n, id="-".join([n] + [signal.Signals(s).name for s, _ in CONFIGS[n][1]]),
                 marks=pytest.mark.xdist_group(n)) for n in CONFIGS])
def test_interrupted_run_resumes_to_the_uninterrupted_weights(name, images, reference,
                                                              tmp_path):
  """Each run of the same command is interrupted in turn (SIGTERM or SIGINT, then SIGKILL
  of the resumed run), then one more run finishes: its final checkpoint (weights and
  optimizer state) equals the uninterrupted run's, and it exports."""
  root = str(tmp_path)
  checkpoints = os.path.join(root, "model", "checkpoints")
  resumed_from = None
  for signum, after in CONFIGS[name][1]:
    proc = _interrupt_after(_start(_flags(name, images, root)), checkpoints, after, signum)
    if resumed_from is not None:
      assert "resuming from {} (step {})".format(*resumed_from) in proc.stdout, proc.stdout
    resumed_from = _check_interrupted(proc, signum, after, checkpoints, root, name)
  last = _finish(_start(_flags(name, images, root)))
  assert last.returncode == 0, last.stderr[-3000:]
  assert "resuming from {} (step {})".format(*resumed_from) in last.stdout
  _assert_same_state(_state(root, _total_steps(name)), reference(name))
  assert os.path.isfile(os.path.join(root, "export", "saved_model.pb"))


@pytest.mark.xdist_group(PARALLEL)
def test_same_command_in_parallel_gives_the_same_weights(reference):
  """Two processes at once, same command: equal results (no shared or racing stream)."""
  first, second = reference.copies(PARALLEL)
  _assert_same_state(first, second)


def test_diverging_run_stops_loudly_and_keeps_the_last_finite_checkpoint(tmp_path):
  flags = ["--model=realnvp", "--dataset=moons", "--batch_size=64", "--eval_every=20",
           "--checkpoint_every=20", "--num_steps=2", "--hidden=16",
           f"--model_dir={tmp_path}/model", f"--export_dir={tmp_path}/export"]
  good = _finish(_start([*flags, "--steps=40"]))
  assert good.returncode == 0, good.stderr[-3000:]
  checkpoints = os.path.join(tmp_path, "model", "checkpoints")
  before = {f: open(os.path.join(checkpoints, f), "rb").read() for f in os.listdir(checkpoints)}
  # The same run, continued with an absurd learning rate: the loss overflows at once.
  bad = _finish(_start([*flags, "--steps=200", "--learning_rate=1e4", "--overwrite"]))
  assert bad.returncode == 3, bad.stderr[-3000:]
  assert "Traceback" not in bad.stderr
  # The resumed run takes the learning rate given now (and says so), not the checkpoint's.
  assert ("learning-rate schedule: using --learning_rate=10000.0 (was 0.001) from here on"
          in bad.stdout), bad.stdout[-2000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged at step ") and "learning_rate" in last
  assert int(last.split(" at step ")[1].split(":")[0]) > 40
  assert f"the last finite checkpoint is {checkpoints}/ckpt-40" in last and "nothing exported" in last
  after = {f: open(os.path.join(checkpoints, f), "rb").read() for f in os.listdir(checkpoints)}
  assert after == before   # no NaN checkpoint written, nothing rotated out
  assert all(np.all(np.isfinite(v)) for v in _state(str(tmp_path), 40).values())
  # The export of the good run is still the good one (not replaced by a NaN model).
  served = tf.saved_model.load(os.path.join(tmp_path, "export"))
  assert np.all(np.isfinite(served.log_prob(tf.zeros([3, 2])).numpy()))


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path):
  flags = ["--model=nice", "--dataset=moons", "--batch_size=32", "--eval_every=10",
           "--checkpoint_every=10", "--num_steps=2", "--hidden=8",
           f"--model_dir={tmp_path}/model", f"--export_dir={tmp_path}/export", "--overwrite"]
  first = _finish(_start([*flags, "--steps=30"]))
  assert first.returncode == 0, first.stderr[-3000:]
  checkpoints = os.path.join(tmp_path, "model", "checkpoints")
  data = os.path.join(checkpoints, "ckpt-30.data-00000-of-00001")
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  second = _finish(_start([*flags, "--steps=40"]))
  assert second.returncode == 0, second.stderr[-3000:]
  warnings = [l for l in second.stderr.splitlines() if l.startswith("warning: ")]
  assert len(warnings) == 1 and f"{checkpoints}/ckpt-30 is corrupt" in warnings[0], warnings
  assert f"resuming from {checkpoints}/ckpt-20 (step 20)" in second.stdout
  # Epoch 3 (steps 21-30) runs again, then epoch 4.
  assert sorted(_scalars(os.path.join(tmp_path, "model", "tensorboard", "validation"))["nll"]
                ) == [10, 20, 30, 30, 40]


def test_stale_export_temporaries_are_swept(tmp_path):
  from tfpflows import export  # pylint: disable=g-import-not-at-top
  target = tmp_path / "served"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  stale = tmp_path / f".served.tmp-export-{dead.stdout.strip()}-abc"
  live = tmp_path / f".served.tmp-export-{os.getpid()}-def"
  other = tmp_path / f".other.tmp-export-{dead.stdout.strip()}-ghi"
  for path in (stale, live, other):
    os.makedirs(path / "saved_model")
  assert export.sweep_stale_exports(target) == [str(stale)]
  assert not stale.exists() and live.exists() and other.exists()
