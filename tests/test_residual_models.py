"""i-ResNet and Residual Flow models: training every weight, spectral norms, saving, export."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows.bijectors import LogDetEstimator
from tfpflows.checkpoint import FlowCheckpoint
from tfpflows.export import export_saved_model
from tfpflows.layers import lipschitz
from tfpflows.layers.residual import ResidualLayer
from tfpflows.models import build_flow
from tests.test_export import SERVE

VEC = dict(event_shape=(2,), num_steps=2, hidden=16)
IMG = dict(event_shape=(8, 8, 1), num_levels=2, num_steps=1, hidden=8)


def _vec_data(n=256, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(n, 2) * [1., .3]
  return np.stack([x[:, 0], x[:, 1] + x[:, 0] ** 2 - 1.], 1).astype("float32")


def _img_data(n=16, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (n, 8, 8, 1)) + rng.rand(n, 8, 8, 1)).astype("float32")


def _model(name, kind, **overrides):
  keras.utils.set_random_seed(0)
  spec = dict(VEC if kind == "vec" else IMG, **overrides)
  model = build_flow(name, **spec)
  data = _vec_data() if kind == "vec" else _img_data()
  model.initialize(data)
  return model, data


def _spectral_layers(model):
  return [l for l in model._flatten_layers(recursive=True)
          if isinstance(l, (lipschitz.SpectralNormDense, lipschitz.SpectralNormConv2D))]


def _expected_trainable(name, kind):
  """Per block: ActNorm 2; three spectral-norm layers (kernel, bias); LipSwish 3 betas."""
  per_block = 2 + 6 + (3 if name == "resflow" else 0)
  if kind == "vec":
    return per_block * VEC["num_steps"]
  levels = IMG["num_levels"]
  # The model's first block has no pre-activation (one LipSwish fewer).
  first = -1 if name == "resflow" else 0
  return per_block * IMG["num_steps"] * levels + first + 2 * (levels - 1)


# Vectors: tests/test_idioms.py (every idiom, exact counts).
@pytest.mark.parametrize("name,kind", [("resflow", "img"), ("iresnet", "img")])
def test_every_trainable_weight_trains_under_fit(name, kind):
  model, data = _model(name, kind)
  assert len(model.trainable_weights) == _expected_trainable(name, kind)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  u_before = [l.u.numpy().copy() for l in _spectral_layers(model)]
  ds = tf.data.Dataset.from_tensor_slices(data).batch(8).repeat()
  # Two steps: g's last layer starts at zero, so the first step leaves the layers before
  # it with an exactly zero gradient.
  hist = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
  unchanged = [w.path for w, b in zip(model.trainable_weights, before)
               if np.array_equal(w.numpy(), b)]
  assert not unchanged, f"weights that did not train: {unchanged}"
  assert np.isfinite(hist.history["loss"][-1])
  # The power iteration's persistent vectors move in training.
  assert any(not np.allclose(l.u.numpy(), b) for l, b in zip(_spectral_layers(model), u_before))


def _conv_operator_norm(layer, kernel):
  """Largest singular value of the convolution as a matrix on the layer's input size."""
  h, w = layer.input_spatial
  c_in = kernel.shape[2]
  basis = np.eye(h * w * c_in).reshape(-1, h, w, c_in)
  out = tf.nn.conv2d(basis, tf.cast(kernel, tf.float64), 1, layer.padding.upper()).numpy()
  return np.linalg.svd(out.reshape(h * w * c_in, -1), compute_uv=False)[0]


@pytest.mark.parametrize("kind", ["vec", "img"])
def test_spectral_norm_at_most_coefficient_after_training(kind):
  """Checked independently: SVD of each normalised kernel (or of the conv's operator)."""
  model, data = _model("resflow", kind)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))   # the trainer's default rate
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(), steps_per_epoch=30,
            epochs=1, verbose=0)
  layers = _spectral_layers(model)
  assert layers
  coeff = 0.98
  norms = []
  for layer in layers:
    kernel = layer.normalized_kernel(training=False).numpy().astype(np.float64)
    if isinstance(layer, lipschitz.SpectralNormConv2D) and kernel.shape[:2] != (1, 1):
      norms.append(_conv_operator_norm(layer, kernel))
    else:
      norms.append(np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0])
  assert max(norms) <= coeff * 1.01, norms
  raw = [np.linalg.svd(l.kernel.numpy().reshape(-1, l.kernel.shape[-1]), compute_uv=False)[0]
         for l in layers]
  # The test can fail both ways: layers whose raw norm exceeds c are normalised to ~c.
  big = [n for n, r in zip(norms, raw) if r > 1.5 * coeff]
  assert all(n > 0.9 * coeff for n in big), (norms, raw)


def test_training_draws_afresh_and_evaluation_is_exact_in_2d():
  model, data = _model("resflow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))   # a new g is 0: train it a little
  model.fit(data, batch_size=32, epochs=1, verbose=0)
  x = tf.constant(data[:16])
  a = model.log_prob(x, training=True).numpy()
  b = model.log_prob(x, training=True).numpy()
  assert not np.allclose(a, b)          # a new stochastic estimate on every call
  assert isinstance(model.flow.flow_layers[1], ResidualLayer)
  assert model.flow.flow_layers[1].eval_logdet == LogDetEstimator.exact()
  np.testing.assert_array_equal(model.log_prob(x).numpy(), model.log_prob(x).numpy())


def test_nll_decreases_and_samples_invert():
  model, data = _model("resflow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  nll0 = -float(tf.reduce_mean(model.log_prob(data)))
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(64).repeat(), steps_per_epoch=30,
            epochs=1, verbose=0)
  assert -float(tf.reduce_mean(model.log_prob(data))) < nll0 - 0.05
  z = model.encode(data[:32])
  np.testing.assert_allclose(model.decode(tf.identity(z)), data[:32], atol=1e-4)
  assert np.all(np.isfinite(model.sample(16, seed=(1, 2))))
  report = model.diagnostics(data[:64])
  assert set(k.split("/")[1] for k in report) == {
      "lipschitz", "series_terms", "logdet_std", "inverse_iterations", "inverse_residual"}
  assert all(0 < v <= 0.98 ** 3 + 1e-3 for k, v in report.items() if k.endswith("/lipschitz"))
  assert all(v >= 3 for k, v in report.items() if k.endswith("/series_terms"))
  assert all(v < 1e-4 for k, v in report.items() if k.endswith("/inverse_residual"))


def test_fit_under_xla():
  model, data = _model("resflow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=True)
  hist = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(32).repeat(),
                   steps_per_epoch=3, epochs=1, verbose=0)
  assert np.isfinite(hist.history["loss"][-1])


def test_save_and_restore_keeps_log_prob(tmp_path):
  model, data = _model("resflow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(), steps_per_epoch=3,
            epochs=1, verbose=0)
  expected = model.log_prob(data).numpy()
  path = str(tmp_path / "m.keras")
  model.save(path)
  FlowCheckpoint(model, tmp_path / "ckpt").save(3)
  from_keras = keras.models.load_model(path)
  from_checkpoint = build_flow("resflow", **VEC, seed=5)
  from_checkpoint.compile(optimizer=keras.optimizers.Adam(1e-2))
  assert FlowCheckpoint(from_checkpoint, tmp_path / "ckpt").restore_latest() == 3
  for restored in (from_keras, from_checkpoint):
    assert restored.initialized
    np.testing.assert_allclose(restored.log_prob(data).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,kind", [("resflow", "vec"), ("resflow", "img"),
                                       ("sylvester", "vec")])
def test_saved_model_serves_without_tfpflows(tmp_path, name, kind):
  """Fixed-point and 1-D-solve inverses included, served by plain TensorFlow."""
  model, data = _model(name, kind)
  # Move every weight off its initial value (zero-initialised last layers included), as
  # training would, without tracing a training step: the export must not be an identity.
  rng = np.random.RandomState(1)
  for w in model.trainable_weights:
    w.assign(w.numpy() + np.asarray(0.05 * rng.randn(*w.shape), "float32"))
  export = tmp_path / "export"
  export_saved_model(model, export)
  np.save(tmp_path / "x.npy", data[:8])
  proc = subprocess.run([sys.executable, "-c", SERVE, str(export), str(tmp_path / "x.npy")],
                        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                        env={**os.environ, "PYTHONPATH": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert out["imported"] == []
  expected = model.log_prob(data[:8]).numpy()
  if kind == "vec":   # exact log-det: identical
    np.testing.assert_allclose(out["log_prob"], expected, rtol=1e-5)
  else:               # the low-variance estimator: a fresh draw, close to the model's
    np.testing.assert_allclose(out["log_prob"], expected, rtol=1e-3)
  assert out["sample_shape"] == [5] + list(data.shape[1:])
  assert out["round_trip"] < (1e-3 if kind == "vec" else 1e-2)   # fixed-point decode
  assert out["fresh_draws"]
