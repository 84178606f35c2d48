"""SavedModel export: served by plain TensorFlow in a process that never imports tfpflows."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows.export import export_saved_model
from tfpflows.models import build_flow

SERVE = r"""
import json, sys
import numpy as np, tensorflow as tf
path, data = sys.argv[1], sys.argv[2]
served = tf.saved_model.load(path)
x = tf.constant(np.load(data))
out = dict(
    signatures=sorted(served.signatures.keys()),
    log_prob=served.log_prob(x).numpy().tolist(),
    serving_default=served.signatures["serving_default"](x=x)["output_0"].numpy().tolist(),
    sample_shape=list(served.sample(tf.constant(5), tf.constant(0.7)).shape),
    round_trip=float(np.max(np.abs(served.decode(served.encode(x)).numpy() - x.numpy()))),
    fresh_draws=bool(np.any(served.sample(tf.constant(2), tf.constant(1.)).numpy()
                            != served.sample(tf.constant(2), tf.constant(1.)).numpy())),
    imported=[m for m in ("tfpflows", "tensorflow_probability") if m in sys.modules])
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def trained_image_model():
  keras.utils.set_random_seed(0)
  model = build_flow("glow", (8, 8, 1), num_levels=2, num_steps=2, hidden=8)
  rng = np.random.RandomState(0)
  data = (rng.randint(0, 256, (12, 8, 8, 1)) + rng.rand(12, 8, 8, 1)).astype("float32")
  model.initialize(data)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(6).repeat(), steps_per_epoch=2,
            epochs=1, verbose=0)
  return model, data


@pytest.mark.xdist_group("trained_image_model")   # the module fixture, computed once
def test_saved_model_serves_without_tfpflows(tmp_path, trained_image_model):
  model, data = trained_image_model
  export = tmp_path / "export"
  export_saved_model(model, export)
  np.save(tmp_path / "x.npy", data)
  proc = subprocess.run([sys.executable, "-c", SERVE, str(export), str(tmp_path / "x.npy")],
                        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                        env={**os.environ, "PYTHONPATH": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["imported"] == []
  assert out["signatures"] == ["decode", "encode", "log_prob", "sample", "serving_default"]
  expected = model.log_prob(data).numpy()
  np.testing.assert_allclose(out["log_prob"], expected, rtol=1e-6)
  np.testing.assert_allclose(out["serving_default"], expected, rtol=1e-6)
  assert out["sample_shape"] == [5, 8, 8, 1]
  assert out["round_trip"] < 1e-2       # pixel units in [0, 256)
  assert out["fresh_draws"]


@pytest.mark.xdist_group("trained_image_model")   # the module fixture, computed once
def test_export_refuses_an_existing_directory_unless_overwrite(tmp_path, trained_image_model):
  model, _ = trained_image_model
  export = tmp_path / "export"
  export.mkdir()
  (export / "keep.txt").write_text("user data")
  with pytest.raises(FileExistsError, match="already exists"):
    export_saved_model(model, export)
  assert (export / "keep.txt").read_text() == "user data"
  export_saved_model(model, export, overwrite=True)
  assert (export / "saved_model.pb").exists() and not (export / "keep.txt").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.xdist_group("trained_image_model")   # the module fixture, computed once
def test_failed_export_leaves_nothing_behind(tmp_path, trained_image_model, monkeypatch):
  model, _ = trained_image_model

  def fail(obj, filepath, *args, **kwargs):   # dies half-way through writing
    del obj
    os.makedirs(filepath, exist_ok=True)
    open(os.path.join(filepath, "partial"), "w").close()
    raise RuntimeError("disk full")

  monkeypatch.setattr(tf.saved_model, "save", fail)
  with pytest.raises(RuntimeError, match="disk full"):
    export_saved_model(model, tmp_path / "export")
  assert list(tmp_path.iterdir()) == []


SERVE_CIF = r"""
import json, sys
import numpy as np, tensorflow as tf
path, data = sys.argv[1], sys.argv[2]
served = tf.saved_model.load(path)
x = tf.constant(np.load(data))
try:
  served.log_prob_k(x, tf.constant(0))
  refused = ""
except tf.errors.InvalidArgumentError as e:
  refused = e.message
out = dict(
    signatures=sorted(served.signatures.keys()),
    log_prob=served.log_prob(x).numpy().tolist(),
    log_prob_again=served.log_prob(x).numpy().tolist(),
    serving_default=served.signatures["serving_default"](x=x)["output_0"].numpy().tolist(),
    log_prob_k=served.log_prob_k(x, tf.constant(2000)).numpy().tolist(),
    elbo=np.mean([served.elbo(x).numpy() for _ in range(20)], 0).tolist(),
    sample_shape=list(served.sample(tf.constant(5), tf.constant(0.7)).shape),
    encode_shape=list(served.encode(x).shape),
    decode_shape=list(served.decode(tf.zeros([3, 2])).shape),
    refused=refused,
    imported=[m for m in ("tfpflows", "tensorflow_probability") if m in sys.modules])
print("RESULT " + json.dumps(out))
"""


def test_cif_saved_model_serves_without_tfpflows(tmp_path):
  """The CIF signatures, served by plain TensorFlow: `log_prob` (default K = 100, fresh
  draws per call), `log_prob_k` (K given; K < 1 refused by a graph assertion), `elbo`
  (below the estimate on average), `sample`, `encode`, `decode`."""
  keras.utils.set_random_seed(0)
  model = build_flow("cif-realnvp", [2], num_steps=2, hidden=16)
  data = np.random.RandomState(0).randn(64, 2).astype("float32")
  model.initialize(data)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(data, batch_size=32, epochs=3, verbose=0)
  export = tmp_path / "export"
  export_saved_model(model, export)
  np.save(tmp_path / "x.npy", data[:16])
  proc = subprocess.run([sys.executable, "-c", SERVE_CIF, str(export), str(tmp_path / "x.npy")],
                        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                        env={**os.environ, "PYTHONPATH": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["imported"] == []
  assert out["signatures"] == ["decode", "elbo", "encode", "log_prob", "log_prob_k", "sample",
                               "serving_default"]
  assert "num_samples must be a positive integer" in out["refused"]
  log_prob, log_prob_k = np.array(out["log_prob"]), np.array(out["log_prob_k"])
  assert log_prob.shape == (16,) and np.all(np.isfinite(log_prob))
  assert not np.array_equal(log_prob, np.array(out["log_prob_again"]))   # fresh draws
  # The same estimators in this process: each served value within 5 of their standard
  # deviations (over repeated draws) of their mean.
  for served, k, repeats in ((log_prob, 100, 40), (log_prob_k, 2000, 10)):
    # `repeats` copies of the 16 points in one call: every row draws its own K samples.
    draws = model.log_prob(np.tile(data[:16], (repeats, 1)), k, seed=(k, 0)).numpy()
    draws = draws.reshape(repeats, 16)
    assert np.all(np.abs(served - draws.mean(0)) < 5 * draws.std(0) + 1e-4), (k, served)
  assert np.mean(out["elbo"]) < np.mean(log_prob_k)
  assert out["sample_shape"] == [5, 2]
  assert out["encode_shape"] == [16, 2] and out["decode_shape"] == [3, 2]
