"""Planar, radial and Sylvester flows: bijector contract, constraints, regimes, Keras layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests import bijector_checks as checks
from tfpflows.bijectors.planar import Planar
from tfpflows.bijectors.radial import Radial
from tfpflows.bijectors.sylvester import Sylvester
from tfpflows.layers import simple_flows as SF
from tfpflows.layers.multiscale import ChainLayer
from tfpflows.models.flow_model import FlowModel

tfb, tfd = tfp.bijectors, tfp.distributions

# name: (raw parameter shapes, constructor, D)
SPECS = {
    "planar": (((4,), (4,), ()), Planar, 4),
    "radial": (((4,), (), ()), Radial, 4),
    "sylvester_orthogonal": (((5, 3), (3, 3), (3, 3), (3,)), Sylvester, 5),
    "sylvester_householder": (((3, 4), (4, 4), (4, 4), (4,)),
                              lambda *p, **kw: Sylvester(*p, kind="householder", **kw), 4),
}
NAMES = sorted(SPECS)


def _raw(name, seed=0, scale=1.):
  shapes = SPECS[name][0]
  rng = np.random.RandomState(seed)
  return [rng.randn(*s) * scale for s in shapes]


def _make(name, dtype, seed=0, scale=1., raw=None, **kwargs):
  raw = _raw(name, seed, scale) if raw is None else raw
  return SPECS[name][1](*[tf.constant(p, dtype) for p in raw], **kwargs)


def _x(d, dtype, batch=6, seed=10, scale=2.):
  return tf.constant(np.random.RandomState(seed).randn(batch, d) * scale, dtype)


def _jacobian(bij, x):
  x = checks.break_cache(x)     # a cached forward(x) would not be on the tape
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y = bij.forward(x)
  return tape.batch_jacobian(y, x, experimental_use_pfor=False).numpy()


# -- the bijector contract ---------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_brute_force_jacobian_float64(name):
  bij, d = _make(name, tf.float64), SPECS[name][2]
  x = _x(d, tf.float64)
  expected = checks.brute_force_fldj(bij, x, 1).numpy()
  np.testing.assert_allclose(bij.forward_log_det_jacobian(x, 1).numpy(), expected, atol=1e-10)
  # The inverse: its autodiff Jacobian (through the solver's implicit gradient) and its ildj.
  y = checks.break_cache(bij.forward(x))
  expected_inv = checks.brute_force_fldj(tfb.Invert(bij), y, 1).numpy()
  np.testing.assert_allclose(expected_inv, -expected, atol=1e-9)
  np.testing.assert_allclose(bij.inverse_log_det_jacobian(y, 1).numpy(), expected_inv,
                             atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,atol", [(tf.float64, 1e-10), (tf.float32, 1e-5)])
def test_round_trip_with_cache_broken_bijective_and_finite(name, dtype, atol):
  bij, d = _make(name, dtype), SPECS[name][2]
  x, y = _x(d, dtype, seed=1), _x(d, dtype, seed=2)
  checks.assert_bijective_and_finite(bij, x, y, 1, atol=atol, rtol=atol)
  if name != "radial":   # the check can fail: an unconverged solve does not round-trip
    with pytest.raises(AssertionError, match="forward"):
      checks.assert_bijective_and_finite(_make(name, dtype, max_iterations=1), x, y, 1,
                                         atol=atol, rtol=atol)


def _adversarial_raws(name, d):
  """Random raw parameters at large scales, and hand-made worst cases."""
  raws = [_raw(name, seed, scale) for seed, scale in ((3, 10.), (4, 100.))]
  rng = np.random.RandomState(5)
  if name == "planar":
    w = rng.randn(d) * 3.
    raws += [[w, -10. * w, 0.5], [w, -1000. * w, -2.], [w * 100., w * -100., 1.],
             [np.zeros(d), rng.randn(d), 0.3], [w * 1e-6, rng.randn(d) * 1e3, 0.]]
  elif name == "radial":
    raws += [[rng.randn(d) * 5, 50., -50.], [rng.randn(d), -50., 50.], [np.zeros(d), 0., -30.]]
  else:
    q, r, rt, b = _raw(name, 6)
    np.fill_diagonal(r, 100.)
    np.fill_diagonal(rt, -100.)   # R_ii R~_ii at its bound
    raws += [[q, r, rt, b], [q * 1e-3, r * 30., rt * 30., b * 30.]]
  return raws


def _check_constraints(name, bij):
  if name == "planar":
    w, u_hat, _, wu_hat, opw = (t.numpy() for t in bij.constrained())
    assert wu_hat >= -1. and opw >= 0. and np.isclose(opw, 1. + wu_hat)
    scale = np.linalg.norm(w) * np.linalg.norm(u_hat)
    assert np.dot(w, u_hat) >= -1. - 1e-12 * (1. + scale)       # as a float dot product too
  elif name == "radial":
    _, alpha, beta, s = (t.numpy() for t in bij.constrained())
    assert alpha > 0. and s >= 0. and beta >= -alpha and np.isclose(alpha + beta, s)
  else:
    q, r, rt, _ = (t.numpy() for t in bij.matrices())
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)
    np.testing.assert_array_equal(np.tril(r, -1), 0.)
    np.testing.assert_array_equal(np.tril(rt, -1), 0.)
    assert np.all(1. + np.diag(r) * np.diag(rt) >= 1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_constraints_hold_for_any_raw_parameters(name):
  """Constraints exact; log-dets finite; the inverse is as accurate as the map's conditioning
  allows: |x - f^{-1}(f(x))| <= 50 eps cond(J_f(x)) (1 + |f(x)|) (backward stable)."""
  d = SPECS[name][2]
  x = _x(d, tf.float64, batch=16, seed=7)
  for raw in _adversarial_raws(name, d):
    bij = _make(name, tf.float64, raw=raw)
    _check_constraints(name, bij)
    y = bij.forward(x)
    y2 = checks.break_cache(y)
    x_back = bij.inverse(y2).numpy()
    fldj = bij.forward_log_det_jacobian(x, 1).numpy()
    ildj = bij.inverse_log_det_jacobian(y2, 1).numpy()
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(fldj))
    err = np.abs(x_back - x.numpy()).max(-1)
    cond = np.linalg.cond(_jacobian(bij, x))
    assert np.all(np.isfinite(cond))
    bound = 50. * np.finfo(np.float64).eps * cond * (1. + np.abs(y.numpy()).max(-1))
    assert np.all(err <= bound), (raw, err, bound)
    np.testing.assert_allclose(ildj, -fldj, atol=1e-6 * (1. + cond.max() * 1e-9))
    # float32 at the same raw values: still finite in both directions.
    bij32 = _make(name, tf.float32, raw=raw)
    y32 = bij32.forward(tf.cast(x, tf.float32))
    for t in (y32, bij32.inverse(checks.break_cache(y32)),
              bij32.forward_log_det_jacobian(tf.cast(x, tf.float32), 1)):
      assert np.all(np.isfinite(t.numpy()))


def _variable_bijector(name, dtype=tf.float32):
  variables = [tf.Variable(p, dtype=dtype) for p in _raw(name, seed=8)]
  return SPECS[name][1](*variables), variables


@pytest.mark.parametrize("name", NAMES)
def test_eager_function_and_xla_agree_with_gradients(name):
  bij, variables = _variable_bijector(name)
  x = _x(SPECS[name][2], tf.float32)

  def run(x):
    with tf.GradientTape() as tape:
      y = bij.forward(x)
      y2 = tf.identity(y)
      x_back = bij.inverse(y2)      # one solve; ildj(y2) comes with it
      loss = (tf.reduce_sum(tf.sin(x_back)) + tf.reduce_sum(bij.forward_log_det_jacobian(x, 1))
              + tf.reduce_sum(bij.inverse_log_det_jacobian(y2, 1)))
    return [y, x_back, loss] + tape.gradient(loss, variables)

  eager = run(x)
  assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in eager[3:])
  for fn in (tf.function(run), tf.function(run, jit_compile=True)):
    for a, b in zip(eager, fn(x)):
      np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_kept_by_reference(name):
  bij, variables = _variable_bijector(name, tf.float64)
  x = _x(SPECS[name][2], tf.float64)
  before = bij.forward(x).numpy()
  variables[0].assign(variables[0] * 1.5 + 0.1)
  assert not np.allclose(bij.forward(tf.identity(x)).numpy(), before)


@pytest.mark.parametrize("name", NAMES)
def test_inverse_parameter_gradients_match_finite_differences(name):
  """The implicit-function gradient of the iterative inverses, against central differences."""
  d = SPECS[name][2]
  raw = _raw(name, seed=9)
  y = _x(d, tf.float64, batch=3, seed=11)
  weights = tf.constant(np.random.RandomState(12).randn(3, d))

  def loss(params):
    bij = SPECS[name][1](*params)
    return (tf.reduce_sum(weights * bij.inverse(y))
            + tf.reduce_sum(bij.inverse_log_det_jacobian(y, 1)))

  params = [tf.constant(p, tf.float64) for p in raw]
  with tf.GradientTape() as tape:
    tape.watch(params)
    value = loss(params)
  grads = tape.gradient(value, params)
  loss = tf.function(loss)     # one trace for all the finite differences
  h = 1e-6
  for k, p in enumerate(raw):
    p = np.asarray(p, np.float64)
    numeric = np.zeros(p.shape)
    for idx in np.ndindex(p.shape):
      plus, minus = p.copy(), p.copy()
      plus[idx] += h
      minus[idx] -= h
      lp = loss([tf.constant(plus) if j == k else q for j, q in enumerate(params)])
      lm = loss([tf.constant(minus) if j == k else q for j, q in enumerate(params)])
      numeric[idx] = (lp.numpy() - lm.numpy()) / (2 * h)
    np.testing.assert_allclose(grads[k].numpy(), numeric, atol=1e-6, rtol=1e-5,
                               err_msg=f"parameter {k}")


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_loop_and_unbatched_input(name):
  bij, d = _make(name, tf.float64), SPECS[name][2]
  x = _x(d, tf.float64, batch=4)
  y = bij.forward(x).numpy()
  x_back = bij.inverse(tf.constant(y)).numpy()
  fldj = bij.forward_log_det_jacobian(x, 1).numpy()
  for i in range(4):
    xi = tf.identity(x[i])          # rank 1: how JointDistributions call bijectors
    np.testing.assert_allclose(bij.forward(xi).numpy(), y[i], atol=1e-12)
    np.testing.assert_allclose(bij.forward_log_det_jacobian(xi, 1).numpy(), fldj[i], atol=1e-12)
    np.testing.assert_allclose(bij.inverse(tf.constant(y[i])).numpy(), x_back[i], atol=1e-12)
  x22 = tf.reshape(x, [2, 2, d])
  np.testing.assert_allclose(bij.forward(x22).numpy().reshape(y.shape), y, atol=1e-12)
  np.testing.assert_allclose(bij.inverse(tf.reshape(tf.constant(y), [2, 2, d])).numpy()
                             .reshape(y.shape), x_back, atol=1e-12)
  assert bij.forward_log_det_jacobian(x22, 2).shape == [2]


def test_planar_and_radial_broadcast_a_batch_of_parameters():
  rng = np.random.RandomState(13)
  params = {"planar": [rng.randn(2, 3), rng.randn(2, 3), rng.randn(2)],
            "radial": [rng.randn(2, 3), rng.randn(2), rng.randn(2)]}
  x = tf.constant(rng.randn(5, 1, 3))
  for name, raw in params.items():
    cls = Planar if name == "planar" else Radial
    bij = cls(*[tf.constant(p) for p in raw])
    assert bij.experimental_batch_shape() == [2]
    y = bij.forward(x)
    assert y.shape == [5, 2, 3]
    np.testing.assert_allclose(bij.inverse(tf.identity(y)).numpy(),
                               np.broadcast_to(x.numpy(), y.shape), atol=1e-10)
    for k in range(2):
      single = cls(*[tf.constant(p[k]) for p in raw])
      np.testing.assert_allclose(y[:, k].numpy(), single.forward(x[:, 0]).numpy(), atol=1e-12)


def test_composes_with_chain_invert_and_transformed_distribution():
  chain = tfb.Chain([_make("planar", tf.float64), tfb.Invert(_make("radial", tf.float64)),
                     _make("sylvester_householder", tf.float64, seed=1)])
  base = tfd.Sample(tfd.Normal(tf.constant(0., tf.float64), 1.), [4])
  dist = tfd.TransformedDistribution(base, chain)
  y = _x(4, tf.float64, seed=14)
  z = chain.inverse(y)
  expected = (base.log_prob(z).numpy()
              + checks.brute_force_fldj(tfb.Invert(chain), y, 1).numpy())
  np.testing.assert_allclose(dist.log_prob(y).numpy(), expected, atol=1e-9)
  samples = dist.sample(8, seed=(1, 2))
  assert samples.shape == [8, 4]
  assert np.all(np.isfinite(dist.log_prob(samples).numpy()))


def test_constructor_errors_are_one_line_and_name_the_value():
  f = tf.float64
  cases = [
      (lambda: Sylvester(tf.zeros([4, 3], f), tf.zeros([3, 3], f), tf.zeros([3, 3], f),
                         tf.zeros([3], f), kind="exponential"), "kind must be one of"),
      (lambda: Sylvester(tf.zeros([3, 4], f), tf.zeros([4, 4], f), tf.zeros([4, 4], f),
                         tf.zeros([4], f)), r"M <= D, got \[3, 4\]"),
      (lambda: Sylvester(tf.zeros([4, 3], f), tf.zeros([2, 2], f), tf.zeros([3, 3], f),
                         tf.zeros([3], f)), r"r_raw must have shape \[3, 3\]"),
      (lambda: Planar(tf.zeros([3], f), tf.zeros([4], f), tf.zeros([], f)),
       "same size D, got 3 and 4"),
      (lambda: Radial(tf.zeros([], f), 0., 0.), "z0 must have shape"),
      (lambda: SF.SylvesterLayer(3, num_hidden=4), r"num_hidden must be in \[1, D = 3\]"),
      (lambda: SF.simple_flow_layers("iaf", (2,), num_steps=1), "unknown simple flow 'iaf'"),
  ]
  for make, message in cases:
    with pytest.raises(ValueError, match=message) as info:
      make()
    assert "\n" not in str(info.value)


# -- Keras layers ------------------------------------------------------------------------

LAYERS = {
    "planar": lambda: SF.PlanarLayer(3, seed=1),
    "radial": lambda: SF.RadialLayer(3, seed=2),
    "sylvester_orthogonal": lambda: SF.SylvesterLayer(3, num_hidden=2, seed=3),
    "sylvester_householder": lambda: SF.SylvesterLayer(3, kind="householder", num_reflections=2,
                                                       seed=4),
}


def _data(n=64, d=2, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randn(n, d) * np.linspace(0.5, 2., d) + 1.).astype("float32")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_starts_near_identity_and_every_weight_gets_a_gradient(name):
  layer = LAYERS[name]()
  y = tf.constant(_data(d=3))
  bij = layer.bijector(training=True)
  assert isinstance(bij.bijector, (Planar, Radial, Sylvester))   # tfb.Invert(<paper's map>)
  np.testing.assert_allclose(layer.bijector().inverse(y).numpy(), y.numpy(), atol=0.1)
  np.testing.assert_allclose(bij.inverse_log_det_jacobian(y, 1).numpy(), 0., atol=0.1)
  with tf.GradientTape() as tape:
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0., 1.), [3]), layer.bijector())
    loss = -tf.reduce_mean(dist.log_prob(y))
  grads = tape.gradient(loss, layer.trainable_weights)
  assert len(grads) == len(layer.trainable_weights) == (3 if name in ("planar", "radial") else 4)
  for w, g in zip(layer.trainable_weights, grads):
    assert g is not None and np.all(np.isfinite(g.numpy())), w.path
    assert np.any(g.numpy() != 0.), f"zero gradient for {w.path}"


def test_flow_model_fit_changes_every_weight():
  """One model with every kind of step (one compile of the training step, not four)."""
  keras.utils.set_random_seed(0)
  layers = SF.simple_flow_layers("planar", (2,), num_steps=1, seed=1)
  for name, kind in (("radial", None), ("sylvester", "orthogonal"), ("sylvester", "householder")):
    layers += SF.simple_flow_layers(name, (2,), num_steps=1, hidden=1, seed=3,
                                    kind=kind or "orthogonal", actnorm=False)
  assert [type(l).__name__ for l in layers] == [
      "ActNormLayer", "PlanarLayer", "RadialLayer", "SylvesterLayer", "SylvesterLayer"]
  assert [l.num_hidden for l in layers[-2:]] == [1, 2]      # M = min(D, hidden); M = D
  model = FlowModel(ChainLayer(layers), event_shape=(2,))
  model.build()
  assert len(model.trainable_weights) == 2 + 3 + 3 + 4 + 4
  data = _data()
  model.initialize(data)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  hist = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(16).repeat(),
                   steps_per_epoch=3, epochs=1, verbose=0)
  unchanged = [w.path for w, b in zip(model.trainable_weights, before)
               if np.array_equal(w.numpy(), b)]
  assert not unchanged, f"weights that did not train: {unchanged}"
  assert np.isfinite(hist.history["loss"][-1])
  samples = model.sample(5, seed=(3, 4))
  assert samples.shape == [5, 2] and np.all(np.isfinite(samples.numpy()))
  np.testing.assert_allclose(model.encode(model.decode(samples)).numpy(), samples.numpy(),
                             atol=1e-4)


def test_simple_flow_layers_on_images_keep_the_latent_shape():
  event_shape = (4, 4, 1)
  layers = SF.simple_flow_layers("sylvester", event_shape, num_steps=1, hidden=3)
  assert [type(l).__name__ for l in layers] == [
      "ReshapeLayer", "ActNormLayer", "SylvesterLayer", "ReshapeLayer"]
  assert layers[2].num_hidden == 3
  model = FlowModel(ChainLayer(layers), event_shape, image=True)
  model.build()
  pixels = np.random.RandomState(0).randint(0, 256, (4,) + event_shape).astype("float32")
  model.initialize(pixels)
  assert model.latent_shape == event_shape
  assert model.log_prob(pixels).shape == [4]
  assert np.all(np.isfinite(model.log_prob(pixels).numpy()))
  assert model.sample(2, seed=(5, 6)).shape == [2, 4, 4, 1]
