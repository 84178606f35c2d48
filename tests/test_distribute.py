"""MirroredStrategy on two logical CPU devices gives the one-device result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("kind", ["vec", "img"])
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
