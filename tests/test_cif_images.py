"""Multi-scale CIF on images: the reduction to the multi-scale base flow against a brute-force
Jacobian, round trips, per-pixel indices at each scale, training under `fit`."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows.layers.cif_multiscale import CIFFactorOut
from tfpflows.models import CIFModel, build_flow


def _image_model(name, size=4, **kw):
  kw.setdefault("num_levels", 2)
  kw.setdefault("num_steps", 1)
  kw.setdefault("hidden", 8)
  model = build_flow(name, [size, size, 1], **kw)
  assert isinstance(model, CIFModel) and model.is_image
  return model


def _factor_outs(stage):
  found = [stage] if isinstance(stage, CIFFactorOut) else []
  for child in getattr(stage, "stages", []) + [getattr(stage, "inner", None)]:
    if child is not None:
      found += _factor_outs(child)
  return found


def _silence_index(model, seed=0):
  """Every weight random (the zero-initialised ones too), then `s = t = 0` and
  `p(u | z) = q(u | h)` in every CIF layer: the model reduces to its base flow."""
  rng = np.random.default_rng(seed)
  for w in model.trainable_weights:
    scale = 0.1 if ("log_scale" in w.path or "loc" in w.path) else 0.3
    w.assign(scale * rng.standard_normal(w.shape).astype("float32"))
  for layer in model.cif_layers:
    for w in layer.st_net.weights[-2:]:
      w.assign(tf.zeros_like(w))
    for wp, wq in zip(layer.p_net.weights, layer.q_net.weights):
      wp.assign(wq)


@pytest.mark.parametrize("name", ["cif-realnvp", "cif-glow", "cif-resflow"])
def test_image_elbo_equals_the_multiscale_base_flow_by_brute_force_jacobian(name):
  """With the index silenced every `log w` is the exact log-density of the multi-scale base
  flow (pixel scaling, squeezes, base maps, factor-out priors), checked against
  `log N(z; 0, I) + log|det dz/dx|` from a brute-force Jacobian of `encode`; and
  `decode(encode(x)) = x`."""
  model = _image_model(name)
  assert [layer.u_shape for layer in model.cif_layers] == [(2, 2, 1), (1, 1, 1)]
  (factor_out,) = _factor_outs(model.stages[0])
  _silence_index(model)
  # The factor-out prior is random too (it starts at zero), so its log-det is checked.
  assert factor_out.prior.weights
  assert all(np.any(w.numpy() != 0) for w in factor_out.prior.weights)
  x = tf.random.stateless_uniform([3, 4, 4, 1], seed=(1, 2), minval=0., maxval=256.)
  log_w = model.log_weights(x, 3, seed=(3, 4)).numpy()
  with tf.GradientTape() as tape:
    tape.watch(x)
    z = model.encode(x, seed=(5, 6))
    flat = tf.reshape(z, [3, 16])
  jac = tape.batch_jacobian(flat, x)
  jac = tf.reshape(jac, [3, 16, 16]).numpy().astype("float64")
  log_det = np.linalg.slogdet(jac)[1]
  flat = flat.numpy().astype("float64")
  exact = log_det - 0.5 * np.sum(flat ** 2, 1) - 8 * np.log(2 * np.pi)
  assert np.all(np.abs(log_w - exact) < 2e-3 * np.abs(exact)), (log_w, exact)
  # The pixel scaling alone contributes -16 log 256; a wrong sign or a dropped level's
  # log-det would move the result far more than the tolerance.
  assert np.all(exact < 0)
  back = model.decode(z, seed=(7, 8)).numpy()
  np.testing.assert_allclose(back, x.numpy(), atol=2e-2 if name == "cif-resflow" else 2e-3)


def test_image_joint_log_prob_takes_one_index_per_layer_at_its_scale():
  model = _image_model("cif-glow", num_steps=2)
  x = tf.random.stateless_uniform([2, 4, 4, 1], seed=(1, 1), minval=0., maxval=256.)
  log_joint, log_q, us = model._pass(x, seed=tf.constant([2, 3]))   # pylint: disable=protected-access
  assert [tuple(u.shape) for u in us] == [(2, 2, 2, 1)] * 2 + [(2, 1, 1, 1)] * 2
  np.testing.assert_allclose(model.joint_log_prob(x, us).numpy(), log_joint.numpy(), rtol=1e-6)
  # Another index changes the joint density (u is used at every scale).
  moved = model.joint_log_prob(x, [u + 1. for u in us]).numpy()
  assert np.all(np.abs(moved - log_joint.numpy()) > 1e-3)
  np.testing.assert_allclose(model.elbo(x, seed=(2, 3)).numpy(),
                             (log_joint - log_q).numpy(), rtol=1e-5)
  with pytest.raises(ValueError, match="expected 4 indices u"):
    model.joint_log_prob(x, us[:3])


def test_image_model_trains_every_weight_under_fit_with_bits_per_dim(tmp_path):
  # 8x8: at 4x4 the second level is 1x1, where a checkerboard coupling has nothing to
  # condition on and its network no gradient.
  model = _image_model("cif-realnvp", size=8)
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 256, (48, 8, 8, 1)) + rng.uniform(size=(48, 8, 8, 1))).astype("float32")
  model.initialize(x)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  # 2 CIF layers x (ActNorm 2 + coupling conv net 6 + s/t 6 + p 6 + q 6), one factor-out
  # prior (kernel, bias).
  assert len(model.trainable_weights) == 2 * (2 + 6 + 6 + 6 + 6) + 2
  history = model.fit(x, batch_size=16, epochs=1, verbose=0)
  assert set(history.history) >= {"loss", "elbo", "nll", "bits_per_dim"}
  changed = [not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before)]
  assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]
  result = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)
  expected = result["nll"] / (64 * np.log(2.))
  assert result["bits_per_dim"] == pytest.approx(expected, rel=1e-5)
  path = str(tmp_path / "cif_image.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.log_prob(x[:4], 5, seed=(1, 2)).numpy(),
                             model.log_prob(x[:4], 5, seed=(1, 2)).numpy(), rtol=1e-5)
  samples = loaded.sample(3, temperature=0.7, seed=(4, 4)).numpy()
  assert samples.shape == (3, 8, 8, 1) and np.all(np.isfinite(samples))


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_levels=3), r"image size 4x4 is not divisible by 2\*\*num_levels = 8"),
    (dict(num_levels=0), "num_levels must be a positive integer; got 0"),
    (dict(u_dim=0), "u_dim must be a positive integer; got 0"),
])
def test_image_bad_input_is_one_line(kwargs, message):
  with pytest.raises(ValueError, match=message) as info:
    _image_model("cif-glow", **kwargs)
  assert "\n" not in str(info.value)
