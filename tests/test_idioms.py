"""Every TFP idiom trains every weight of every family, with exact counts.

Idioms: Keras `fit`; a custom `tf.GradientTape` loop with the distribution built once,
eagerly and inside `tf.function`; `tfp.math.minimize`; `tfp.vi.fit_surrogate_posterior`;
`tfp.math.minimize` of the sticking-the-landing loss (a stopped copy of the surrogate).
Each checks that every trainable weight gets a non-zero gradient and changes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import vi
from tfpflows.models import build_flow

tfb, tfd = tfp.bijectors, tfp.distributions

D, STEPS, HIDDEN = 2, 1, 8

# Trainable weights of a one-step flow on [2], counted from the architectures:
#   glow      per step: ActNorm (loc, log_scale) + LU conv (L/U, log|s|) + MLP 3 Dense x 2
#   realnvp   per step: ActNorm 2 + MLP 6
#   nice      per step: MLP 6; plus one final ActNorm 2
#   iresnet   per block: ActNorm 2 + spectral-norm MLP 3 Dense x 2 (ELU has no weights)
#   resflow   per block: ActNorm 2 + spectral-norm MLP 6 + 3 LipSwish betas
#   planar    ActNorm 2 + per map (w, u, b)
#   radial    ActNorm 2 + per map (z0, alpha, beta)
#   sylvester ActNorm 2 + per map (Q, R, R~, b)
EXPECTED = {
    "glow": 10, "realnvp": 8, "nice": 6 + 2, "iresnet": 8, "resflow": 11,
    "planar": 2 + 3, "radial": 2 + 3, "sylvester": 2 + 4,
}
FAMILIES = sorted(EXPECTED)


def _data(n=64):
  rng = np.random.RandomState(0)
  return tf.constant((rng.randn(n, D) * [1., 2.] + [0.5, -1.]).astype("float32"))


def _density_model(name):
  keras.utils.set_random_seed(0)
  model = build_flow(name, (D,), num_steps=STEPS, hidden=HIDDEN)
  model.initialize(_data())
  return model


def _values(model):
  return [w.numpy().copy() for w in model.trainable_weights]


def _assert_all_changed(model, before, idiom):
  assert len(model.trainable_weights) == EXPECTED[model._spec["name"]]
  unchanged = [w.path for w, b in zip(model.trainable_weights, before)
               if np.array_equal(w.numpy(), b)]
  assert not unchanged, f"{idiom}: {len(unchanged)} of {len(before)} weights did not change: " \
                        f"{unchanged}"
  assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)


def _assert_all_gradients(grads, variables, idiom):
  missing = [v.name for g, v in zip(grads, variables) if g is None]
  zero = [v.name for g, v in zip(grads, variables)
          if g is not None and not np.any(tf.convert_to_tensor(g).numpy())]
  assert not missing and not zero, f"{idiom}: no gradient {missing}, zero gradient {zero}"


def _custom_loop(model, dist, x, *, compiled):
  """Two Adam steps on `-mean log q(x)` with `dist` built beforehand; gradients of step 2."""
  variables = model.tf_trainable_variables
  opt = keras.optimizers.Adam(1e-2)

  def step():
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    return grads

  if compiled:
    opt.build(variables)
    step = tf.function(step)
  step()
  return step()


@pytest.mark.parametrize("name", FAMILIES)
def test_every_idiom_trains_every_weight(name):
  x = _data()
  model = _density_model(name)
  assert len(model.trainable_weights) == EXPECTED[name]
  assert len(model.tf_trainable_variables) == EXPECTED[name]

  # Keras fit (two steps: zero-initialised last layers give the others a zero first gradient).
  before = _values(model)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(x, batch_size=32, epochs=1, verbose=0)
  _assert_all_changed(model, before, "fit")

  # The distribution built once, before the loops, and reused by all of them: the
  # evaluation setting eagerly, the training setting (residual blocks' stochastic
  # estimator) in the tf.function loop.
  dist, train_dist = model.distribution(), model.distribution(training=True)
  assert len(dist.trainable_variables) == EXPECTED[name]
  assert {id(v) for v in dist.trainable_variables} == {
      id(v) for v in model.tf_trainable_variables}
  for compiled in (False, True):
    idiom = "tf.function loop" if compiled else "eager loop"
    before = _values(model)
    grads = _custom_loop(model, train_dist if compiled else dist, x, compiled=compiled)
    _assert_all_gradients(grads, model.tf_trainable_variables, idiom)
    _assert_all_changed(model, before, idiom)

  # tfp.math.minimize, watching whatever the loss reads (trainable_variables=None).
  before = _values(model)
  losses = tfp.math.minimize(lambda: -tf.reduce_mean(dist.log_prob(x)), num_steps=2,
                             optimizer=keras.optimizers.Adam(1e-2))
  assert np.all(np.isfinite(losses))
  _assert_all_changed(model, before, "tfp.math.minimize")


@pytest.mark.parametrize("name", FAMILIES)
def test_fit_surrogate_posterior_trains_every_weight(name):
  """TFP's VI loop on the live surrogate, with TFP finding the variables itself."""
  target = tfd.MultivariateNormalDiag([1., -1.], [0.5, 2.])
  model = vi.build_surrogate(name, [D], num_steps=STEPS, hidden=HIDDEN, initial_scale=1.5)
  assert len(model.trainable_weights) == EXPECTED[name]
  q = model.distribution(training=True)
  before = _values(model)
  losses = tfp.vi.fit_surrogate_posterior(target.log_prob, q, keras.optimizers.Adam(1e-2),
                                          num_steps=3, sample_size=16, seed=(1, 2))
  assert np.all(np.isfinite(losses))
  _assert_all_changed(model, before, "fit_surrogate_posterior")


def test_repeated_uses_in_one_trace_are_fresh():
  """Two steps in one tf.function trace on the same tensor: the second sees the first's
  update (no cached result), and a stochastic estimator draws afresh at each use."""
  model = _density_model("realnvp")
  x = _data()
  dist = model.distribution()
  variables = model.tf_trainable_variables
  opt = keras.optimizers.SGD(0.1)
  opt.build(variables)

  @tf.function
  def two_steps():
    out = []
    for _ in range(2):
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
      grads = tape.gradient(loss, variables)
      out.append(grads)
      opt.apply_gradients(zip(grads, variables))
    return out

  first, second = two_steps()
  assert all(g is not None for g in second)
  assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(first, second))
  resflow = _density_model("resflow")
  rng = np.random.default_rng(0)       # away from the zero-initialised last layers (g = 0)
  for w in resflow.trainable_weights:
    w.assign(w.numpy() + 0.3 * rng.standard_normal(w.shape).astype("float32"))
  train = resflow.distribution(training=True)
  y = tf.constant([[0.3, -0.2]] * 4)
  first, second = train.log_prob(y).numpy(), train.log_prob(y).numpy()
  assert not np.allclose(first, second)       # two draws of the Russian-roulette estimate
  np.testing.assert_allclose(resflow.distribution().log_prob(y).numpy(),
                             resflow.distribution().log_prob(y).numpy())   # exact in 2D


def test_distribution_sees_updates_made_after_it_was_built():
  model = _density_model("glow")
  x = _data()
  dist = model.distribution()
  first = dist.log_prob(x).numpy()
  loc = model._actnorm_layers()[0].loc
  loc.assign(loc + 0.5)
  np.testing.assert_allclose(dist.log_prob(x).numpy(), model.log_prob(x).numpy(), rtol=1e-5)
  assert not np.allclose(dist.log_prob(x).numpy(), first)
  bij = model.bijector()
  z = bij.inverse(x)
  loc.assign(loc - 0.5)
  assert not np.allclose(bij.inverse(x).numpy(), z.numpy())   # z is held: still recomputed
  y = tf.identity(x)
  assert bij.inverse(bij.forward(y)) is y          # the way back is TFP's cache hit


def test_live_distribution_composes_with_tfp():
  """Chain, Invert, a JointDistribution and TFP's own bijectors around the live flow."""
  model = _density_model("realnvp")
  x = _data(8)
  bij = model.bijector()
  chained = tfb.Chain([tfb.Shift(1.), bij])
  np.testing.assert_allclose(chained.forward(tf.identity(x)).numpy(),
                             bij.forward(tf.identity(x)).numpy() + 1., rtol=1e-5, atol=1e-5)
  inverted = tfb.Invert(bij)
  np.testing.assert_allclose(inverted.forward(tf.identity(x)).numpy(),
                             bij.inverse(tf.identity(x)).numpy(), rtol=1e-5, atol=1e-5)
  joint = tfd.JointDistributionSequential([
      model.distribution(),
      lambda y: tfd.Independent(tfd.Normal(y, 1.), reinterpreted_batch_ndims=1)])
  with tf.GradientTape() as tape:
    lp = joint.log_prob([x, x + 0.1])
  grads = tape.gradient(lp, model.tf_trainable_variables)
  assert all(g is not None for g in grads)
  assert len(joint.trainable_variables) == len(model.tf_trainable_variables)


@pytest.mark.parametrize("name", FAMILIES)
def test_sticking_the_landing_trains_every_weight(name):
  """TFP's doubly-reparameterised (STL) loss with `distribution(stop_gradient=True)` as the
  stopped surrogate, minimised by `tfp.math.minimize`: the path derivative alone reaches
  every weight (for maps on the sampling side through their iterative inverse)."""
  target = tfd.MultivariateNormalDiag([1., -1.], [0.5, 2.])
  model = vi.build_surrogate(name, [D], num_steps=STEPS, hidden=HIDDEN, initial_scale=1.5)
  q = model.distribution(training=True)
  stopped = model.distribution(training=True, stop_gradient=True)
  variables = model.tf_trainable_variables

  def loss():
    return tfp.vi.monte_carlo_variational_loss(
        target.log_prob, q, sample_size=16, seed=(3, 4),
        gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
        stopped_surrogate_posterior=stopped)

  # The stopped copy alone passes no gradient to any weight (so the gradients below are
  # the path derivative's, through the live draws).
  x = tf.constant([[0.3, -0.2], [1.1, 0.4]])
  with tf.GradientTape() as tape:
    lp = tf.reduce_sum(stopped.log_prob(x))
  assert all(g is None or not np.any(g.numpy()) for g in tape.gradient(lp, variables))
  before = _values(model)
  losses = tfp.math.minimize(loss, num_steps=2, optimizer=keras.optimizers.Adam(1e-2),
                             trainable_variables=variables)
  assert np.all(np.isfinite(losses))
  with tf.GradientTape() as tape:
    value = loss()
  _assert_all_gradients(tape.gradient(value, variables), variables, "stl")
  _assert_all_changed(model, before, "stl minimize")
