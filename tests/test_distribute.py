"""MirroredStrategy on two logical CPU devices gives the one-device result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", ["vec", "img", "resflow", "cif"])
def test_mirrored_strategy_matches_one_device(kind):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "distribute_check.py"), kind],
                        capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["replicas"] == 2
  # ActNorm initialised from per-replica halves equals initialisation on the global batch.
  assert out["init_diff"] < 1e-5, out
  # Same losses and weights after 8 SGD steps, within float32 reduction-order noise. (SGD:
  # Adam divides by sqrt(v), which turns ~1e-12 reduction noise on the exactly-zero first
  # gradients behind zero-initialised layers into full-size steps.)
  np.testing.assert_allclose(out["loss_mirrored"], out["loss_single"], rtol=1e-4)
  assert out["weight_diff"] < 1e-4, out
  assert out["moved"] > 0.1, out
  if kind in ("resflow", "cif"):   # the stochastic estimator (or u ~ q), mirrored
    assert np.all(np.isfinite(out["stochastic_loss"])), out
  if kind == "cif":   # each replica draws its own u (seeds folded with the replica id)
    assert out["replica_draws_differ"], out


def _free_ports(n):
  import socket  # pylint: disable=g-import-not-at-top
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _result(proc):
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.split("RESULT ", 1)[1])


def test_multi_worker_mirrored_strategy_two_workers_on_loopback():
  """Two worker processes on 127.0.0.1 train identically, and like one device."""
  script = os.path.join(ROOT, "tests", "multiworker_check.py")
  ports = ",".join(map(str, _free_ports(2)))
  procs = [subprocess.Popen([sys.executable, script, str(i), ports], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
  workers = [_result(p) for p in procs]
  single = _result(subprocess.Popen([sys.executable, script, "single"], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  assert workers[0]["weights"] == workers[1]["weights"]
  np.testing.assert_allclose(workers[0]["loss"], single["loss"], rtol=1e-4)
  for a, b in zip(workers[0]["weights"], single["weights"]):
    np.testing.assert_allclose(a, b, atol=1e-4)
