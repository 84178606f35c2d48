"""Continuously indexed flows: the indexed affine bijector, the reduction to the base flow,
the importance-sampled likelihood against quadrature, samples against the density, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors as B
from tfpflows import layers as L
from tfpflows.layers.cif import CIFLayer
from tfpflows.models import CIFModel, build_flow
from tests import bijector_checks as checks

tfb, tfd = tfp.bijectors, tfp.distributions


def _st_net(d_u, d, dtype, seed):
  rng = np.random.RandomState(seed)
  w1 = tf.constant(rng.randn(d_u, 8) * 0.7, dtype)
  w2 = tf.constant(rng.randn(8, 2 * d) * 0.5, dtype)
  return lambda u: tf.matmul(tf.tanh(tf.matmul(u, w1)), w2)


def _randomize(model, scale=0.4, seed=0):
  """Every weight of the CIF networks and base maps random (zero-initialised ones too)."""
  rng = np.random.default_rng(seed)
  for w in model.trainable_weights:
    if "log_scale" in w.path or "loc" in w.path:
      w.assign(0.1 * rng.standard_normal(w.shape).astype("float32"))
    else:
      w.assign(scale * rng.standard_normal(w.shape).astype("float32"))


# -- the bijector ----------------------------------------------------------------------

def test_indexed_affine_round_trip_and_log_det_against_brute_force():
  bij = B.IndexedAffine(_st_net(1, 3, tf.float64, 0), event_ndims=1)
  h = tf.constant(np.random.RandomState(1).randn(4, 3), tf.float64)
  u = tf.constant(np.random.RandomState(2).randn(4, 1), tf.float64)
  z = bij.inverse(h, u=u)
  np.testing.assert_allclose(bij.forward(checks.break_cache(z), u=u).numpy(), h.numpy(),
                             atol=1e-12)
  fresh = checks.break_cache(h)       # not the cached result of the call above
  with tf.GradientTape() as tape:
    tape.watch(fresh)
    zz = bij.inverse(fresh, u=u)
  jac = tape.batch_jacobian(zz, fresh)
  expected = np.linalg.slogdet(jac.numpy())[1]
  np.testing.assert_allclose(bij.inverse_log_det_jacobian(h, event_ndims=1, u=u).numpy(),
                             expected, atol=1e-10)
  np.testing.assert_allclose(bij.forward_log_det_jacobian(z, event_ndims=1, u=u).numpy(),
                             -expected, atol=1e-10)


def test_indexed_affine_composes_by_name_in_a_chain_and_needs_u():
  affine = B.IndexedAffine(_st_net(2, 2, tf.float32, 3), event_ndims=1, name="cif_affine")
  chain = tfb.Chain([tfb.Shift([1., -1.]), affine])
  z = tf.random.stateless_normal([5, 2], seed=(1, 2))
  u = tf.random.stateless_normal([5, 2], seed=(3, 4))
  x = chain.forward(z, cif_affine={"u": u})
  np.testing.assert_allclose(x.numpy(), affine.forward(z, u=u).numpy() + [1., -1.], rtol=1e-6)
  back = chain.inverse(checks.break_cache(x), cif_affine={"u": u})
  np.testing.assert_allclose(back.numpy(), z.numpy(), atol=1e-5)
  with pytest.raises(ValueError, match="the index u is required"):
    affine.forward(z)


# -- the model -------------------------------------------------------------------------

def _model(name="cif-realnvp", num_steps=1, seed=0, **kw):
  model = build_flow(name, [2], num_steps=num_steps, hidden=8, seed=seed, **kw)
  assert isinstance(model, CIFModel)
  return model


@pytest.mark.parametrize("name", ["cif-realnvp", "cif-glow", "cif-resflow"])
def test_elbo_equals_the_base_flow_when_the_index_does_nothing(name):
  """Cornish et al.'s reduction: `s = t = 0` and `p(u | z) = q(u | h)` give `log w` equal
  to the base flow's exact log-likelihood for every draw of `u`."""
  model = _model(name, num_steps=2)
  _randomize(model)
  for layer in model.cif_layers:
    for w in layer.st_net.weights[-2:]:
      w.assign(tf.zeros_like(w))                       # s = t = 0 for every u
    for wp, wq in zip(layer.p_net.weights, layer.q_net.weights):
      wp.assign(wq)                                    # p(u | z) = q(u | h), z = h
  x = tf.random.stateless_normal([6, 2], seed=(5, 6))
  log_w = model.log_weights(x, 4, seed=(7, 8)).numpy()
  base = tfd.TransformedDistribution(
      tfd.Sample(tfd.Normal(0., 1.), [2]),
      tfb.Chain([layer.base.bijector() for layer in model.cif_layers]))
  exact = base.log_prob(x).numpy()
  np.testing.assert_allclose(log_w, np.broadcast_to(exact, log_w.shape), rtol=1e-5, atol=1e-5)


def _quadrature_log_prob(model, x, grid=np.linspace(-12., 12., 2401), chunk=32):
  """`log integral p(x, u) du` for a one-layer model with a 1-D `u`, by the trapezoid rule."""
  weights = np.full(len(grid), grid[1] - grid[0])
  weights[[0, -1]] /= 2
  out = []
  for i in range(0, len(x), chunk):
    xc = x[i:i + chunk]
    us = np.tile(grid, len(xc)).reshape(-1, 1).astype("float32")
    joint = model.joint_log_prob(np.repeat(xc, len(grid), 0), [us]).numpy()
    joint = joint.reshape(len(xc), len(grid))
    peak = joint.max(1, keepdims=True)
    out.append(peak[:, 0] + np.log(np.sum(weights * np.exp(joint - peak), 1)))
  return np.concatenate(out)


def _indexed_model():
  """One CIF-RealNVP layer with random weights: `u` changes the map noticeably, and `p` and
  `q` have standard deviations within about e^{+-0.5} (so the grid holds their mass)."""
  model = _model("cif-realnvp", num_steps=1)
  _randomize(model, scale=0.6, seed=3)
  layer = model.cif_layers[0]
  for net in (layer.p_net, layer.q_net):
    for w in net.weights[-2:]:
      w.assign(0.3 * w)
  return model


def test_importance_sampled_log_prob_approaches_quadrature_from_below():
  model = _indexed_model()
  x = np.random.default_rng(4).standard_normal((5, 2)).astype("float32")
  exact = _quadrature_log_prob(model, x)
  reps = 200
  def estimates(k, seed):
    est = model.log_prob(np.tile(x, (reps, 1)), k, seed=seed).numpy().reshape(reps, 5)
    return est.mean(0), est.std(0) / np.sqrt(reps)
  (m1, s1), (m10, s10), (m1000, s1000) = (estimates(k, (k, 1)) for k in (1, 10, 1000))
  print("quadrature", exact, "gaps K = 1, 10, 1000:", exact - m1, exact - m10, exact - m1000)
  assert np.all(m1 < exact + 4 * s1)                           # ELBO <= log p(x)
  assert np.all(m10 > m1 - 4 * np.hypot(s1, s10))              # tighter with K
  assert np.all(m1000 > m10 - 4 * np.hypot(s10, s1000))
  assert np.all(np.abs(m1000 - exact) < 4 * s1000 + 2e-3), (m1000 - exact, s1000)
  assert np.mean(exact - m1) > 0.02    # the index matters: the bound is not tight at K = 1


def test_samples_match_the_quadrature_density():
  model = _indexed_model()
  n = 100_000
  samples = model.sample(n, seed=(9, 9)).numpy()
  edges = np.linspace(-3., 3., 13)
  width = edges[1] - edges[0]
  hist, _, _ = np.histogram2d(samples[:, 0], samples[:, 1], bins=[edges, edges])
  sub = (np.arange(4) + 0.5) / 4 * width        # 4 x 4 midpoints per cell
  pts = np.array([[a + sa, b + sb] for a in edges[:-1] for b in edges[:-1]
                  for sa in sub for sb in sub], np.float32)
  probs = np.exp(_quadrature_log_prob(model, pts)).reshape(12, 12, 16).mean(-1) * width ** 2
  expected = n * probs
  mask = expected > 20
  chi2 = float(np.sum((hist[mask] - expected[mask]) ** 2 / expected[mask]))
  dof = int(mask.sum())
  print("chi2", chi2, "cells", dof, "mass in the window", probs.sum())
  assert dof > 40
  assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)      # sampling noise: chi2 ~ dof


def test_every_weight_trains_under_fit_and_the_model_saves(tmp_path):
  model = _model("cif-realnvp", num_steps=2)
  x = np.random.default_rng(0).standard_normal((256, 2)).astype("float32") * [1., 0.5]
  model.initialize(x)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  # 2 layers x (ActNorm 2 + coupling MLP 6 + st 6 + p 6 + q 6)
  assert len(model.trainable_weights) == 2 * (2 + 6 + 6 + 6 + 6)
  history = model.fit(x, batch_size=64, epochs=2, verbose=0)
  assert set(history.history) >= {"loss", "elbo", "nll"}
  changed = [not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before)]
  assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]
  path = str(tmp_path / "cif.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.log_prob(x[:8], 20, seed=(1, 2)).numpy(),
                             model.log_prob(x[:8], 20, seed=(1, 2)).numpy(), rtol=1e-5)


def test_eager_function_and_xla_agree():
  """Same seeds, same numbers eagerly and in a `tf.function`; under XLA, whose stateless
  random numbers may come from another algorithm, the exact joint density agrees and the
  estimators run (finite, right shapes)."""
  model = _indexed_model()
  x = tf.random.stateless_normal([7, 2], seed=(1, 1))
  u = tf.random.stateless_normal([7, 1], seed=(2, 2))
  eager = model.log_prob(x, 16, seed=(4, 2)).numpy()
  graph = tf.function(lambda x: model.log_prob(x, 16, seed=(4, 2)))(x).numpy()
  np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5)
  joint = model.joint_log_prob(x, [u]).numpy()
  xla_joint = tf.function(lambda x, u: model.joint_log_prob(x, [u]), jit_compile=True)(x, u)
  np.testing.assert_allclose(xla_joint.numpy(), joint, rtol=1e-5, atol=1e-5)
  xla = tf.function(lambda x: model.log_prob(x, 16, seed=(4, 2)), jit_compile=True)(x).numpy()
  assert xla.shape == (7,) and np.all(np.isfinite(xla))
  samples = tf.function(lambda: model.sample(5, seed=(3, 3)), jit_compile=True)().numpy()
  assert samples.shape == (5, 2) and np.all(np.isfinite(samples))
  np.testing.assert_allclose(tf.function(lambda: model.sample(5, seed=(3, 3)))().numpy(),
                             model.sample(5, seed=(3, 3)).numpy(), atol=1e-5)


@pytest.mark.parametrize("call,message", [
    (lambda m: m.log_prob(np.zeros((2, 2), "float32"), 0),
     "num_samples must be a positive integer; got 0"),
    (lambda m: m.log_prob(np.zeros((2, 3), "float32")), r"expected a batch of shape \[batch, 2\]"),
    (lambda m: m.sample(-1), "n must be an integer >= 0; got -1"),
    (lambda m: m.sample(3, temperature=0.), "temperature must be a finite number > 0"),
    (lambda m: m.joint_log_prob(np.zeros((2, 2), "float32"), []), "expected 1 indices u"),
    (lambda m: build_flow("cif-realnvp", [2], u_dim=0), "u_dim must be a positive integer"),
    (lambda m: build_flow("cif-resflow", [2], placement="sample"), "does not apply to cif"),
    (lambda m: CIFLayer(tfb.Shift([1., 2.]), [2]), "base must be a BijectorLayer"),
    (lambda m: CIFModel([CIFLayer(L.SqueezeLayer(), [4, 4, 1])], [4, 4, 1], image=True).build(),
     r"the base flow cannot be indexed: it maps events of shape \[4, 4, 1\] to \[2, 2, 4\]"),
    (lambda m: build_flow("realnvp", [2], u_dim=2), "u_dim applies to the CIF models"),
])
def test_bad_input_is_one_line(call, message):
  model = _model("cif-realnvp", num_steps=1)
  with pytest.raises(ValueError, match=message) as info:
    call(model)
  assert "\n" not in str(info.value)


def test_training_resumes_exactly_with_evaluation_between(tmp_path):
  """A run checkpointed at step 6 and resumed ends with the weights of an uninterrupted
  12-step run, held-out evaluations (their own seed streams) included."""
  from tfpflows import data, training  # pylint: disable=g-import-not-at-top
  from tfpflows.checkpoint import FlowCheckpoint  # pylint: disable=g-import-not-at-top
  flow = data.load_data("moons", batch_size=32, seed=0)

  def new():
    keras.utils.set_random_seed(0)
    model = build_flow("cif-realnvp", [2], num_steps=2, hidden=8, seed=3)
    model.initialize(next(iter(flow.train_from(0))))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model

  whole = new()
  training.fit_steps(whole, flow.train_from, steps=12, eval_every=6,
                     validation_data=flow.heldout.take(1), verbose=0)
  first = new()
  training.fit_steps(first, flow.train_from, steps=6, eval_every=6,
                     validation_data=flow.heldout.take(1), verbose=0)
  FlowCheckpoint(first, tmp_path / "ckpt").save(6)
  resumed = new()
  assert FlowCheckpoint(resumed, tmp_path / "ckpt").restore_latest() == 6
  training.fit_steps(resumed, flow.train_from, steps=12, eval_every=6,
                     validation_data=flow.heldout.take(1), verbose=0)
  moved = max(float(np.max(np.abs(a.numpy() - b.numpy())))
              for a, b in zip(whole.variables, new().variables))
  assert moved > 1e-3
  for a, b in zip(whole.variables, resumed.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_diagnostics_report_the_index_gap_and_the_effective_sample_size():
  model = _model("cif-resflow", num_steps=2)
  x = np.random.default_rng(0).standard_normal((32, 2)).astype("float32")
  report = model.diagnostics(x, num_samples=50)
  names = [l.name for l in model.cif_layers]
  assert {f"{n}/u_gap" for n in names} <= set(report)
  assert any(k.endswith("/lipschitz") for k in report)        # the residual bases' figures
  assert 1. <= report["ess"] <= 50. and report["ess_fraction"] == report["ess"] / 50
  # With the index networks silenced (s = t = 0, p = q) the gap is 0 for every draw and
  # q is the exact posterior: every weight equal, ESS = K.
  for layer in model.cif_layers:
    for w in layer.st_net.weights + layer.p_net.weights + layer.q_net.weights:
      w.assign(tf.zeros_like(w))
  report = model.diagnostics(x, num_samples=50)
  assert all(abs(report[f"{n}/u_gap"]) < 1e-6 for n in names), report
  assert report["ess"] == pytest.approx(50., rel=1e-4)


def test_k_sample_training_bound_is_refused_over_the_neumann_gradient():
  """The K-sample bound weights draws unequally; the Neumann log-det gradient assumes equal
  weights: the combination is a one-line ValueError, other base flows accept it."""
  resflow = build_flow("cif-resflow", (2,), num_steps=1, hidden=8)
  with pytest.raises(ValueError, match="train_num_samples: .* Neumann log-det gradient"):
    CIFModel(resflow.stages, (2,), train_num_samples=2)
  realnvp = build_flow("cif-realnvp", (2,), num_steps=1, hidden=8)
  assert CIFModel(realnvp.stages, (2,), train_num_samples=2).train_num_samples == 2
