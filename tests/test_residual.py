"""Residual blocks: log-det estimators vs the exact value, Neumann gradient, inverse, cache."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.bijectors import FixedPointInverse, LogDetEstimator, ResidualBlock
from tests import bijector_checks as checks

tfb, tfd = tfp.bijectors, tfp.distributions
E = LogDetEstimator


def contractive_mlp(d, lip, seed, dtype=tf.float64, hidden=16):
  """g(x) = W2 tanh(W1 x) with ||W1|| = ||W2|| = sqrt(lip): Lip(g) <= lip."""
  rng = np.random.RandomState(seed)
  w1, w2 = rng.randn(d, hidden), rng.randn(hidden, d)
  w1 *= np.sqrt(lip) / np.linalg.norm(w1, 2)
  w2 *= np.sqrt(lip) / np.linalg.norm(w2, 2)
  w1, w2 = tf.Variable(w1, dtype=dtype), tf.Variable(w2, dtype=dtype)
  return (lambda x: tf.matmul(tf.tanh(tf.matmul(x, w1)), w2)), [w1, w2]


def contractive_conv(c, lip, seed, dtype=tf.float64):
  rng = np.random.RandomState(seed)
  k = rng.randn(3, 3, c, c)
  # ||conv|| <= sum of |kernel taps| norms: scale crudely below lip.
  k *= lip / sum(np.linalg.norm(k[i, j], 2) for i in range(3) for j in range(3))
  k = tf.constant(k, dtype)
  return lambda x: tf.tanh(tf.nn.conv2d(x, k, 1, "SAME"))


def exact_log_det(g, x):
  """Brute force: log|det(I + J_g)| by batch_jacobian and slogdet, float64."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    gx = g(x)
  jac = tape.batch_jacobian(gx, x).numpy()
  d = jac.shape[1]
  return np.linalg.slogdet(np.eye(d) + jac)[1]


X = np.random.RandomState(0).randn(5, 3)


def draws(g, estimator, x, n, stream, event_ndims=1):
  """`n` independent estimates `[n, batch]`, seeds `[stream, i]`, from one traced graph."""
  fn = tf.function(lambda s: ResidualBlock(g, logdet=estimator, seed=s)
                   .inverse_log_det_jacobian(x, event_ndims))
  return np.stack([fn(tf.constant([stream, i])).numpy() for i in range(n)])


def test_exact_matches_brute_force():
  g, _ = contractive_mlp(3, 0.9, 1)
  x = tf.constant(X)
  got = ResidualBlock(g, logdet=E.exact()).inverse_log_det_jacobian(x, event_ndims=1)
  np.testing.assert_allclose(got, exact_log_det(g, x), atol=1e-10)


@pytest.mark.parametrize("estimator", [E.resflow(), E.resflow(n_terms=0, p=0.3),
                                       E(method="roulette", neumann_gradient=False,
                                         probe="rademacher"),
                                       E.low_variance(num_probes=2)],
                         ids=["resflow", "no_exact_terms", "rademacher", "low_variance"])
def test_roulette_is_unbiased(estimator):
  """Mean over many independent draws within 3 standard errors of the exact log-det."""
  g, _ = contractive_mlp(3, 0.9, 1)
  x = tf.constant(X)
  exact = exact_log_det(g, x)
  n = 400
  values = draws(g, estimator, x, n, 7)
  err = values.mean(0) - exact
  se = values.std(0) / np.sqrt(n)
  assert np.all(np.abs(err) < 3 * se + 1e-12), (err, se)
  assert np.all(se > 0)   # really stochastic


def test_truncated_series_shows_its_bias_near_lipschitz_one():
  """g(x) = 0.99 x: exact log det = D log 1.99; two terms give D (0.99 - 0.99^2 / 2)."""
  g = lambda x: 0.99 * x
  x = tf.constant(X)
  exact = 3 * np.log(1.99)
  # Hutchinson is exact in expectation; for J = 0.99 I a Rademacher probe is exact.
  rademacher = E(method="series", n_terms=2, probe="rademacher", neumann_gradient=False)
  series = ResidualBlock(g, logdet=rademacher, seed=1).inverse_log_det_jacobian(x, 1)
  np.testing.assert_allclose(series, 3 * (0.99 - 0.99 ** 2 / 2), rtol=1e-12)
  assert np.all(exact - series.numpy() > 0.5)
  roulette = E(method="roulette", n_terms=2, probe="rademacher", p=0.1, max_terms=2000,
               neumann_gradient=False)
  values = draws(g, roulette, x[:1], 300, 3)
  assert abs(values.mean() - exact) < 3 * values.std() / np.sqrt(300)


def _grad_fn(g, params, estimator, x):
  @tf.function
  def grads(seed):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(ResidualBlock(g, logdet=estimator, seed=seed)
                            .inverse_log_det_jacobian(x, event_ndims=1))
    return tape.gradient(loss, params)
  return lambda seed: [t.numpy() for t in grads(tf.constant(seed or [0, 0]))]


@pytest.mark.parametrize("estimator", [E.resflow(), E(method="roulette", neumann_gradient=False)],
                         ids=["neumann", "backprop"])
def test_gradient_mean_matches_exact_gradient(estimator):
  g, params = contractive_mlp(3, 0.8, 2)
  x = tf.constant(np.tile(X, [8, 1]))        # 40 rows, independent probes per row
  exact = _grad_fn(g, params, E.exact(), x)(None)
  n = 150
  fn = _grad_fn(g, params, estimator, x)
  values = [fn([11, i]) for i in range(n)]
  for j, ref in enumerate(exact):
    d = np.stack([dr[j] for dr in values])
    z = (d.mean(0) - ref) / (d.std(0) / np.sqrt(n) + 1e-12)
    assert np.max(np.abs(z)) < 5., np.max(np.abs(z))
    assert np.abs(d.mean(0) - ref).max() < 0.1 * np.abs(ref).max()


def test_neumann_input_gradient_per_example():
  """The input gradient is exact per example: weighting examples differently works."""
  g, _ = contractive_mlp(3, 0.8, 2)
  x = tf.constant(X)
  weights = tf.constant([1., -2., 0., 3., 0.5], tf.float64)
  def grad_fn(est):
    @tf.function
    def grad(seed):
      with tf.GradientTape() as tape:
        tape.watch(x)
        out = ResidualBlock(g, logdet=est, seed=seed).inverse_log_det_jacobian(x, 1)
        loss = tf.reduce_sum(weights * out)
      return tape.gradient(loss, x)
    return grad
  exact = grad_fn(E.exact())(tf.constant([0, 0])).numpy()
  fn = grad_fn(E.resflow())
  values = np.stack([fn(tf.constant([5, i])).numpy() for i in range(200)])
  z = (values.mean(0) - exact) / (values.std(0) / np.sqrt(200) + 1e-12)
  assert np.max(np.abs(z)) < 5.
  assert np.all(values[:, 2] == 0.)


@pytest.mark.parametrize("estimator", [E.resflow(), E(method="roulette", neumann_gradient=False),
                                       E.exact()], ids=["neumann", "backprop", "exact"])
def test_explicit_parameters_give_the_gradients_of_variables_read_by_g(estimator):
  """`g(x, params)` with `g_params` made from variables (here a normalisation, as spectral
  norm makes them) gives the same outputs and gradients, to the input and every raw
  variable, as a `g` that makes them itself: the Neumann estimator then differentiates
  `g` in the explicit tensors and the normalisation is backpropagated once."""
  rng = np.random.RandomState(3)
  raw = [tf.Variable(rng.randn(3, 16)), tf.Variable(rng.randn(16, 3))]
  scale = tf.Variable(0.9, dtype=tf.float64)

  def made():                         # parameters from the raw variables, differentiably
    return tuple(scale * w / tf.norm(w) for w in raw)

  def g_params(x, params):
    return tf.matmul(tf.tanh(tf.matmul(x, params[0])), params[1])

  x = tf.constant(X)
  c = tf.constant(rng.randn(*X.shape))

  def run(explicit):
    with tf.GradientTape() as tape:
      tape.watch(x)
      if explicit:
        block = ResidualBlock(g_params, logdet=estimator, seed=[3, 1], g_params=made())
      else:
        block = ResidualBlock(lambda y: g_params(y, made()), logdet=estimator, seed=[3, 1])
      z = block.inverse(x)
      ildj = block.inverse_log_det_jacobian(x, 1)
      loss = tf.reduce_sum(z * c) + tf.reduce_mean(ildj)
    grads = tape.gradient(loss, [x, scale] + raw)
    return [z, ildj] + grads

  for a, b in zip(run(True), run(False)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)
  assert all(np.any(d.numpy() != 0) for d in run(True)[2:])


def test_value_of_neumann_estimator_is_the_log_det_estimate():
  """With the Neumann gradient the value is the same estimate as without it."""
  g, _ = contractive_mlp(3, 0.9, 1)
  x = tf.constant(X)
  a = ResidualBlock(g, logdet=E.resflow(), seed=[1, 2]).inverse_log_det_jacobian(x, 1)
  b = ResidualBlock(g, logdet=E.resflow().replace(neumann_gradient=False),
                    seed=[1, 2]).inverse_log_det_jacobian(x, 1)
  np.testing.assert_allclose(a, b, rtol=1e-12)


def test_fresh_draw_per_instance_and_reproducible_with_seed():
  g, _ = contractive_mlp(3, 0.9, 1)
  x = tf.constant(X)
  dist = lambda b: tfd.TransformedDistribution(tfd.Sample(tfd.Normal(tf.constant(0., tf.float64),
                                                                     1.), 3), b)
  # Equal-looking instances with seed=None must not share a cached estimate.
  a = dist(ResidualBlock(g)).log_prob(x)
  b = dist(ResidualBlock(g)).log_prob(x)
  assert not np.allclose(a, b)
  s1 = dist(ResidualBlock(g, seed=[4, 2])).log_prob(x)
  s2 = dist(ResidualBlock(g, seed=[4, 2])).log_prob(tf.identity(x))
  np.testing.assert_array_equal(s1, s2)
  s3 = dist(ResidualBlock(g, seed=[4, 3])).log_prob(x)
  assert not np.allclose(s1, s3)


def test_fused_inverse_and_log_det_match():
  g, _ = contractive_mlp(3, 0.9, 1)
  x = tf.constant(X)
  fused = ResidualBlock(g, seed=[2, 2], fuse_logdet=True)
  plain = ResidualBlock(g, seed=[2, 2])
  np.testing.assert_allclose(fused.inverse(x), plain.inverse(x))
  np.testing.assert_allclose(fused.inverse_log_det_jacobian(x, 1),
                             plain.inverse_log_det_jacobian(x, 1), rtol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(tf.float64, 1e-10), (tf.float32, 1e-5)])
def test_fixed_point_round_trip(dtype, tol):
  g, _ = contractive_mlp(3, 0.9, 3, dtype=dtype)
  block = ResidualBlock(g, logdet=E.exact(),
                        inverse=FixedPointInverse(atol=tol / 10, rtol=tol / 10))
  y = tf.constant(X, dtype)
  z = block.inverse(y)
  back = block.forward(checks.break_cache(z))
  np.testing.assert_allclose(back, y, atol=tol, rtol=0)
  _, iterations, residual, converged = block.forward_with_diagnostics(z)
  assert 1 < int(iterations) < 200
  assert np.all(converged) and np.all(residual.numpy() <= tol)


def test_fixed_point_round_trip_images():
  g = contractive_conv(2, 0.9, 4)
  block = ResidualBlock(g, logdet=E.exact(), event_ndims=3,
                        inverse=FixedPointInverse(atol=1e-11, rtol=1e-11))
  y = tf.constant(np.random.RandomState(1).randn(2, 3, 3, 2))
  back = block.forward(checks.break_cache(block.inverse(y)))
  np.testing.assert_allclose(back, y, atol=1e-10)
  with tf.GradientTape() as tape:
    tape.watch(y)
    gy = g(y)
  jac = tape.batch_jacobian(gy, y).numpy().reshape(2, 18, 18)
  np.testing.assert_allclose(block.inverse_log_det_jacobian(y, 3),
                             np.linalg.slogdet(np.eye(18) + jac)[1], atol=1e-10)


def test_non_convergence_is_reported():
  w = tf.constant(np.diag([1.5, 0.5, 0.5]))
  g = lambda x: tf.matmul(x, w)          # Lip(g) = 1.5 > 1: the iteration diverges
  block = ResidualBlock(g, inverse=FixedPointInverse(max_iterations=50))
  z = tf.constant(X)
  with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
    block.forward(z)
  y, iterations, residual, converged = block.forward_with_diagnostics(z)
  assert int(iterations) == 50 and not np.any(converged)
  assert np.all(np.isnan(y))
  quiet = ResidualBlock(g, inverse=FixedPointInverse(max_iterations=50, on_failure="nan"))
  assert np.all(np.isnan(quiet.forward(z)))


@pytest.mark.parametrize("jit", [False, True])
def test_graph_and_xla(jit):
  g, _ = contractive_mlp(3, 0.9, 1, dtype=tf.float32)
  x = tf.constant(X, tf.float32)
  exact = ResidualBlock(g, logdet=E.exact()).inverse_log_det_jacobian(x, 1)
  fn = tf.function(lambda x: ResidualBlock(g, logdet=E.exact()).inverse_log_det_jacobian(x, 1),
                   jit_compile=jit)
  np.testing.assert_allclose(fn(x), exact, rtol=1e-4, atol=1e-5)
  # Stochastic: reproducible within a regime; the draws' mean is unbiased under it too.
  est = tf.function(lambda x, s: ResidualBlock(g, logdet=E.resflow(), seed=s)
                    .inverse_log_det_jacobian(x, 1), jit_compile=jit)
  np.testing.assert_array_equal(est(x, tf.constant([1, 2])), est(x, tf.constant([1, 2])))
  draws = np.stack([est(x, tf.constant([9, i])).numpy() for i in range(300)])
  se = draws.std(0) / np.sqrt(300)
  assert np.all(np.abs(draws.mean(0) - exact.numpy()) < 3.5 * se + 1e-6)
  # A training step's gradient under the regime (no retracing per seed).
  @tf.function(jit_compile=jit)
  def grad(x, s):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = tf.reduce_sum(ResidualBlock(g, logdet=E.resflow(), seed=s, fuse_logdet=True)
                          .inverse_log_det_jacobian(x, 1))
    return tape.gradient(out, x)
  for i in range(3):
    assert np.all(np.isfinite(grad(x, tf.constant([1, i]))))
  assert grad.experimental_get_tracing_count() == 1
  inv = tf.function(lambda z: ResidualBlock(g).forward(z), jit_compile=jit)
  z = ResidualBlock(g).inverse(x)
  np.testing.assert_allclose(inv(z), x, atol=1e-4)


def test_batch_shapes_and_unbatched():
  g, _ = contractive_mlp(3, 0.9, 1)
  block = ResidualBlock(g, logdet=E.exact())
  y = tf.constant(np.random.RandomState(2).randn(2, 4, 3))
  ildj = block.inverse_log_det_jacobian(y, 1)
  assert ildj.shape == (2, 4)
  for i in range(2):
    for j in range(4):
      np.testing.assert_allclose(block.inverse_log_det_jacobian(y[i, j], 1), ildj[i, j],
                                 atol=1e-12)
      np.testing.assert_allclose(block.inverse(y[i, j]), block.inverse(y)[i, j], atol=1e-12)


def test_composes_with_tfp():
  g, _ = contractive_mlp(3, 0.9, 1)
  chain = tfb.Chain([tfb.Shift(tf.constant(1., tf.float64)),
                     ResidualBlock(g, logdet=E.exact()), tfb.Invert(tfb.Scale(
                         tf.constant(2., tf.float64)))])
  dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(tf.constant(0., tf.float64), 1.), 3),
                                     chain)
  x = tf.constant(X)
  lp = dist.log_prob(x)
  assert lp.shape == (5,) and np.all(np.isfinite(lp))
  s = dist.sample(4, seed=(1, 2))
  np.testing.assert_allclose(chain.forward(chain.inverse(checks.break_cache(s))), s, atol=1e-8)


def test_bad_config_one_line_errors():
  with pytest.raises(ValueError, match="method must be one of"):
    E(method="hutch")
  with pytest.raises(ValueError, match="p must be in"):
    E(p=1.5)
  with pytest.raises(ValueError, match="on_failure"):
    FixedPointInverse(on_failure="ignore")
  with pytest.raises(TypeError, match="must be a LogDetEstimator"):
    ResidualBlock(lambda x: x, logdet="roulette")
