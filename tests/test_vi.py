"""Variational inference: placements' exact sample log-densities, ELBO against known log Z,
the live bijector's cache, the mixture base."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors, targets, vi
from tfpflows.models import build_flow

tfb, tfd = tfp.bijectors, tfp.distributions


def _perturbed(model, scale=0.3, seed=0):
  """Moves every trainable weight by N(0, scale^2) noise, so no map is near the identity."""
  rng = np.random.default_rng(seed)
  for w in model.trainable_weights:
    w.assign(w.numpy() + scale * rng.standard_normal(w.shape).astype("float32"))
  return model


@pytest.mark.parametrize("placement", ["density", "sample"])
@pytest.mark.parametrize("name", ["planar", "radial", "sylvester", "resflow"])
def test_placements_give_exact_sample_log_densities(name, placement):
  """log q of `experimental_sample_and_log_prob` = log N(z) + log|det dz/dy| by brute force."""
  keras.utils.set_random_seed(1)
  model = build_flow(name, (3,), num_steps=1 if name == "resflow" else 2, hidden=8,
                     placement=placement)
  model.initialize(np.random.default_rng(0).standard_normal((64, 3)).astype("float32"))
  _perturbed(model)
  dist = model.distribution()
  y, log_q = dist.experimental_sample_and_log_prob(32, seed=(3, 4))
  y = tf.identity(y)                                   # TFP's cache broken
  with tf.GradientTape() as tape:
    tape.watch(y)
    z = model.snapshot_bijector().inverse(y)
  jac = tape.batch_jacobian(z, y)
  _, logdet = np.linalg.slogdet(jac.numpy().astype(np.float64))
  log_n = -0.5 * np.sum(np.square(z.numpy().astype(np.float64)), -1) - 1.5 * np.log(2 * np.pi)
  np.testing.assert_allclose(log_q.numpy(), log_n + logdet, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(model.log_prob(tf.identity(y)).numpy(), log_q.numpy(), rtol=2e-4,
                             atol=2e-4)
  np.testing.assert_allclose(model.decode(model.encode(tf.identity(y))).numpy(), y.numpy(),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["planar", "radial", "sylvester", "resflow"])
def test_sample_placement_puts_the_explicit_map_on_the_sampling_side(name):
  """In "sample" placement `forward` is the paper's map: no iterative solve when sampling."""
  density = build_flow(name, (2,), num_steps=1, hidden=8)
  sample = build_flow(name, (2,), num_steps=1, hidden=8, placement="sample")
  inverted = lambda m: hasattr(m.flow.flow_layers[-1].bijector(), "bijector")  # an Invert
  # The paper's map is a bijector's `forward` for planar, radial and Sylvester, and the
  # residual block's `inverse` (`y + g(y)`): `Invert` moves it to the other side.
  paper_forward = name != "resflow"
  assert inverted(density) == paper_forward and inverted(sample) != paper_forward
  assert sample.get_config()["placement"] == "sample"
  assert "placement" not in density.get_config()


def _fit_kl(target, name, num_steps, *, base_components=1, steps=400, seed=0):
  keras.utils.set_random_seed(seed)     # the networks' initial weights (Keras' global seed)
  model = vi.build_surrogate(name, [2], num_steps=num_steps, hidden=16, seed=seed,
                             initial_scale=2., base_components=base_components)
  vi.fit_surrogate(target.unnormalized_log_prob, model, num_steps=steps, sample_size=64,
                   learning_rate=1e-2, seed=seed)
  return vi.elbo(target.unnormalized_log_prob, model.distribution(), num_samples=8000, seed=7)


def test_elbo_approaches_log_z_on_the_banana():
  """The banana is a shear `x2 + b (x1^2 - a^2)` of a Gaussian: one affine coupling (its
  shift an MLP of `x1`) can approximate it closely, and the fitted ELBO is within a few
  hundredths of log Z (measured KL with seeds 0, 1, 2, `fit_surrogate`'s default STL
  gradient: 0.0085, 0.011, 0.011; with the reparameterised one 0.016, 0.014, 0.096; in
  Glow's coupling order, before `shift_side="latent"`: 0.024, 0.028, 0.043). Seed 0 is
  run."""
  target = targets.banana()
  est = _fit_kl(target, "realnvp", 1, steps=300)
  kl = est.kl(target.log_z)
  print("banana KL:", kl)
  assert -4 * est.stderr < kl < 0.04, (kl, est.stderr)
  assert est.log_z == pytest.approx(target.log_z, abs=0.05)


def test_elbo_approaches_log_z_and_improves_with_depth_on_the_funnel():
  """Neal's funnel. 4 RealNVP steps (exp-scale couplings, which can contract the neck, in
  RealNVP's order) come within a few thousandths of a nat of log Z in 300 steps (KL with
  seeds 0, 1, 2 and `fit_surrogate`'s default STL gradient: 0.0020, 0.0005, 0.0008; with
  the reparameterised one 0.007, 0.008, 0.003; in Glow's order 0.079, 0.061, 0.155);
  planar flows (reparameterised gradient, "auto" for an iterative inverse) improve with
  depth (2 maps: 1.00, 0.91, 0.91; 16 maps: 0.76, 0.58, 0.64)."""
  target = targets.funnel()
  deep = _fit_kl(target, "realnvp", 4, steps=300)
  kl_deep = deep.kl(target.log_z)
  print("funnel KL, 4 RealNVP steps:", kl_deep, deep.stderr)
  assert -4 * deep.stderr < kl_deep < 0.01, (kl_deep, deep.stderr)    # a lower bound on log Z
  assert deep.log_z == pytest.approx(target.log_z, abs=0.1)   # importance-sampled log Z
  shallow, deeper = _fit_kl(target, "planar", 2, steps=300), _fit_kl(target, "planar", 16,
                                                                     steps=300)
  kl_shallow, kl_deeper = shallow.kl(target.log_z), deeper.kl(target.log_z)
  print("funnel KL, 2 and 16 planar maps:", kl_shallow, kl_deeper)
  assert kl_deeper > -4 * deeper.stderr
  assert kl_deeper + 2 * deeper.stderr < kl_shallow - 2 * shallow.stderr


def test_mixture_base_keeps_the_modes_of_a_multimodal_target():
  """4 separated modes: a unimodal base loses some (KL about log 4 or worse); a mixture base
  keeps them (4 RealNVP steps, 8 components; seeds 0, 1, 2: 0.23, 0.16, 0.29 against 4.45,
  1.57, 4.30 with a unimodal base, `fit_surrogate`'s default STL gradient; reparameterised
  0.46, 0.14, 0.37 against 4.45, 1.21, 4.30; in Glow's coupling order 0.33, 0.19, 0.22
  against 1.50, 4.39, 1.22)."""
  target = targets.gaussian_mixture()
  unimodal = _fit_kl(target, "realnvp", 4, steps=300)
  mixture = _fit_kl(target, "realnvp", 4, base_components=8, steps=300)
  kl_uni, kl_mix = unimodal.kl(target.log_z), mixture.kl(target.log_z)
  print("mixture KL, unimodal and mixture base:", kl_uni, kl_mix)
  assert kl_mix > -4 * mixture.stderr
  assert kl_mix < 0.7, (kl_mix, mixture.stderr)
  assert kl_mix + 0.2 < kl_uni, (kl_mix, kl_uni)


def test_tfp_reuses_a_stale_log_det_and_deferred_does_not():
  """TFP 0.25 keeps a log-det while the input tensor lives; `Deferred` recomputes it.

  Only `Deferred` is asserted on; TFP's own figure is printed (a later TFP may fix it)."""
  v = tf.Variable(2.)
  y = tf.constant([1., 2.])
  plain = tfd.TransformedDistribution(tfd.Normal(0., 1.), tfb.Scale(v))
  live = tfd.TransformedDistribution(tfd.Normal(0., 1.), bijectors.Deferred(
      lambda: tfb.Scale(tf.convert_to_tensor(v)), event_ndims=0, variables=[v]))
  plain.log_prob(y), live.log_prob(y)
  v.assign(3.)
  exact = tfd.Normal(0., 3.).log_prob(y).numpy()
  print("TFP's Scale(v) after v.assign(3.):", plain.log_prob(y).numpy(), "exact:", exact)
  np.testing.assert_allclose(live.log_prob(y).numpy(), exact, rtol=1e-6)
  assert live.trainable_variables == (v,)
  with tf.GradientTape() as tape:
    lp = tf.reduce_sum(live.log_prob(y))
  # d/dv sum(log N(y / v) - log v) = sum(y^2) / v^3 - 2 / v
  np.testing.assert_allclose(tape.gradient(lp, v).numpy(), 5. / 27. - 2. / 3., rtol=1e-5)


def test_mixture_base_trains_saves_and_serves(tmp_path):
  model = build_flow("realnvp", (2,), num_steps=2, hidden=8, base_components=3)
  plain = build_flow("realnvp", (2,), num_steps=2, hidden=8)
  assert len(model.trainable_weights) == len(plain.trainable_weights) + 3
  x = np.random.default_rng(0).standard_normal((64, 2)).astype("float32")
  model.initialize(x)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  model.fit(x, batch_size=32, epochs=1, verbose=0)
  assert all(not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before))
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(), rtol=1e-5)
  # log-density of the base by hand: a mixture of 3 diagonal Gaussians
  base = model.base
  w = tf.nn.softmax(base.logits).numpy()
  z = model.encode(x).numpy()
  comp = [np.sum(-0.5 * ((z - base.loc.numpy()[k]) / np.exp(base.log_scale.numpy()[k])) ** 2
                 - base.log_scale.numpy()[k] - 0.5 * np.log(2 * np.pi), -1) for k in range(3)]
  mix = np.log(np.sum(w[:, None] * np.exp(np.array(comp)), 0))
  np.testing.assert_allclose(base.distribution().log_prob(z).numpy(), mix, rtol=1e-4, atol=1e-5)
  samples = model.sample(5, temperature=0.5, seed=(1, 2))
  assert samples.shape == (5, 2) and np.all(np.isfinite(samples.numpy()))


@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
def test_build_surrogate_starts_at_the_given_gaussian(name):
  """Coupling surrogates start exactly at N(initial_loc, initial_scale^2 I) (Glow's 1x1
  convolutions are rotations of the standard normal base; its couplings, with the exp
  scale, identities; RealNVP's one ActNorm, next to the base, is followed by identities)."""
  model = vi.build_surrogate(name, [2], initial_loc=[1., -2.], initial_scale=[0.5, 3.],
                             hidden=8)
  assert model.initialized
  assert model.get_config().get("affine_scale") == (None if name == "nice" else "exp")
  actnorms = [l for l in model._flatten_layers() if l.__class__.__name__ == "ActNormLayer"]
  assert len(actnorms) == 1   # next to the base (RealNVP; NICE's scaling), or on the data side
  layers = model.flow.flow_layers
  assert (layers[0] if name == "glow" else layers[-1]) is actnorms[0]
  assert model.get_config().get("shift_side") == ("latent" if name == "realnvp" else None)
  x = np.random.default_rng(0).standard_normal((16, 2)).astype("float32")
  exact = tfd.MultivariateNormalDiag([1., -2.], [0.5, 3.]).log_prob(x).numpy()
  np.testing.assert_allclose(model.log_prob(x).numpy(), exact, rtol=1e-4, atol=1e-4)
  planar = vi.build_surrogate("planar", [2])
  assert all(l.placement == "sample" for l in planar.flow.flow_layers[1:])


def test_realnvp_surrogate_with_an_actnorm_per_step_starts_at_the_given_gaussian():
  """RealNVP's order with an ActNorm after every coupling: the data-side one carries the
  initial location and scale, the others start as identities."""
  model = vi.build_surrogate("realnvp", [2], initial_loc=[1., -2.], initial_scale=[0.5, 3.],
                             num_steps=3, hidden=8, step_actnorm=True)
  actnorms = [l for l in model._flatten_layers() if l.__class__.__name__ == "ActNormLayer"]
  assert len(actnorms) == 3
  assert type(model.flow.flow_layers[-1]).__name__ == "ActNormLayer"   # after the last coupling
  x = np.random.default_rng(0).standard_normal((16, 2)).astype("float32")
  exact = tfd.MultivariateNormalDiag([1., -2.], [0.5, 3.]).log_prob(x).numpy()
  np.testing.assert_allclose(model.log_prob(x).numpy(), exact, rtol=1e-4, atol=1e-4)


def test_exp_scale_surrogate_saves_and_loads_with_its_scale(tmp_path):
  model = vi.build_surrogate("realnvp", [2], num_steps=2, hidden=8, initial_scale=2.)
  vi.fit_surrogate(targets.funnel().unnormalized_log_prob, model, num_steps=20, seed=1)
  path = str(tmp_path / "q.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.get_config()["affine_scale"] == "exp"
  x = np.random.default_rng(0).standard_normal((8, 2)).astype("float32")
  np.testing.assert_allclose(loaded.log_prob(x).numpy(), model.log_prob(x).numpy(), rtol=1e-5)



def _floor_kl(shift_side, *, seed, warm=6000, evals=8, every=500, stl=False):
  """KL at `evals` points of a constant-rate (Adam 1e-2) fit of the funnel after `warm`
  steps: TFP's loss in one compiled step, as a user's own loop runs it (`stl`: with the
  sticking-the-landing gradient, TFP's doubly-reparameterised estimator)."""
  keras.utils.set_random_seed(seed)
  target = targets.funnel()
  model = vi.build_surrogate("realnvp", [2], num_steps=4, hidden=32, seed=seed,
                             initial_scale=2., shift_side=shift_side)
  q, variables = model.distribution(), model.tf_trainable_variables
  estimator = {}
  if stl:
    estimator = dict(gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
                     stopped_surrogate_posterior=model.distribution(stop_gradient=True))
  opt = keras.optimizers.Adam(1e-2)
  opt.build(variables)
  seeds = tf.Variable(tfp.random.sanitize_seed(seed))

  @tf.function(jit_compile=True, autograph=False)
  def step():
    s, nxt = tfp.random.split_seed(seeds, 2)
    with tf.GradientTape() as tape:
      loss = tfp.vi.monte_carlo_variational_loss(target.unnormalized_log_prob, q,
                                                 sample_size=64, seed=s, **estimator)
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    seeds.assign(nxt)

  kls = []
  for k in range(warm + evals * every):
    step()
    if k >= warm and (k - warm + 1) % every == 0:
      kls.append(vi.elbo(target.unnormalized_log_prob, q, num_samples=10000,
                         seed=k).kl(target.log_z))
  return np.array(kls)


def test_latent_side_shifts_keep_a_constant_rate_fit_of_the_funnel_steady():
  """RealNVP's coupling order (`shift_side="latent"`, `build_surrogate`'s default for
  RealNVP) against Glow's on Neal's funnel at a constant Adam rate: with the shifts in data
  units Adam's jitter moves the mass across the neck (width `e^{-4.5}`) and the KL spikes.
  Measured, KL at 8 points after 6,000 steps, seeds 0, 1, 2: latent side means 0.0065,
  0.013 and 0.0085 (max 0.038), data side 0.070, 0.023 and 0.066 (max 0.18). One seed's
  window can be calm on the data side too (seed 1 alone: ratio 0.58), so the seeds are
  pooled; the bound on the maximum is loose (other CPUs draw other jitters)."""
  latent = np.concatenate([_floor_kl("latent", seed=s) for s in (0, 1, 2)])
  data = np.concatenate([_floor_kl("data", seed=s) for s in (0, 1, 2)])
  print("funnel KL at a constant rate, latent / data side shifts:", np.round(latent, 4),
        np.round(data, 4))
  assert latent.max() < 0.1, latent
  assert latent.mean() < 0.5 * data.mean(), (latent, data)


# -- the sticking-the-landing gradient (a stopped copy of the surrogate) --------------------


def _stl_surrogate(name, base_components=1, seed=0):
  keras.utils.set_random_seed(seed)
  model = vi.build_surrogate(name, [2], num_steps=2, hidden=8, seed=seed, initial_scale=1.5,
                             base_components=base_components)
  return _perturbed(model, scale=0.2, seed=seed)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name,components", [("realnvp", 3), ("glow", 1), ("sylvester", 1),
                                             ("resflow", 1)])
def test_stopped_distribution_is_the_same_density_with_no_weight_gradients(name, components,
                                                                         training):
  """`distribution(stop_gradient=True)`: the live density's values and its gradient in `x`,
  no gradient to any weight (flow or mixture base), and it follows later weight changes;
  eagerly and in a compiled function; in the evaluation setting and in the training one
  (what STL uses; residual blocks' stochastic log-det, so their values are compared in the
  evaluation setting only)."""
  model = _stl_surrogate(name, components)
  live = model.distribution(training=training)
  stopped = model.distribution(training=training, stop_gradient=True)
  exact = not (training and name == "resflow")
  assert {id(v) for v in stopped.trainable_variables} == {
      id(v) for v in model.tf_trainable_variables}
  x = tf.constant(np.random.default_rng(1).standard_normal((16, 2)).astype("float32"))
  variables = model.tf_trainable_variables

  def parts(dist):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      lp = dist.log_prob(x)
      total = tf.reduce_sum(lp)
    return lp, tape.gradient(total, x), tape.gradient(total, variables)

  for fn in (parts, tf.function(parts)):
    lp, gx, gw = fn(live)
    lp_s, gx_s, gw_s = fn(stopped)
    if exact:
      np.testing.assert_allclose(lp_s.numpy(), lp.numpy(), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(gx_s.numpy(), gx.numpy(), rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(lp_s.numpy())) and np.all(np.isfinite(gx_s.numpy()))
    assert sum(g is not None and np.any(g.numpy() != 0) for g in gw) == len(variables)
    assert all(g is None or not np.any(g.numpy()) for g in gw_s), [
        v.name for v, g in zip(variables, gw_s) if g is not None and np.any(g.numpy())]
  if not exact:
    return
  before = stopped.log_prob(x).numpy()
  _perturbed(model, scale=0.1, seed=5)
  np.testing.assert_allclose(stopped.log_prob(x).numpy(), live.log_prob(x).numpy(),
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(stopped.log_prob(x).numpy() - before)) > 1e-3


def _estimator_grads(model, target_log_prob_fn, estimator, seed, n=256):
  q = model.distribution(training=True)
  kwargs = {}
  if estimator == "stl":
    kwargs = dict(gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
                  stopped_surrogate_posterior=model.distribution(training=True,
                                                                 stop_gradient=True))
  with tf.GradientTape() as tape:
    loss = tfp.vi.monte_carlo_variational_loss(target_log_prob_fn, q, sample_size=n,
                                               seed=seed, **kwargs)
  grads = tape.gradient(loss, model.tf_trainable_variables)
  return np.concatenate([tf.reshape(g, [-1]).numpy() for g in grads])


def test_stl_gradient_is_zero_where_q_is_the_target():
  """Roeder et al.'s property: with `q` equal to the target the STL gradient of every draw
  is zero, while the reparameterised one is not (its score term has mean zero, not value
  zero). The target is a second model with the same weights (another code path)."""
  model = _stl_surrogate("realnvp", 3)
  twin = _stl_surrogate("realnvp", 3)
  twin.set_weights(model.get_weights())
  target = twin.distribution().log_prob
  stl = _estimator_grads(model, target, "stl", (1, 2))
  rep = _estimator_grads(model, target, "reparameterized", (1, 2))
  print("max |gradient| at q = p: stl", np.abs(stl).max(), "reparameterized", np.abs(rep).max())
  assert np.abs(rep).max() > 0.05
  assert np.abs(stl).max() < 1e-4 * np.abs(rep).max() + 1e-6


def test_stl_gradient_has_the_reparameterized_gradients_mean():
  """Away from the target the two estimators differ draw by draw by the score term,
  `-grad log q(x)` at fixed `x`, whose mean is zero: over 24 batches of 512 draws from the
  same seeds the per-coordinate mean difference is within 4.5 standard errors of zero
  (each coordinate's t statistic, 23 degrees of freedom), and the estimators do differ."""
  model = _stl_surrogate("realnvp", 1)
  target = targets.banana().unnormalized_log_prob
  diffs, reps = [], []
  for b in range(24):
    stl = _estimator_grads(model, target, "stl", (7, b), n=512)
    rep = _estimator_grads(model, target, "reparameterized", (7, b), n=512)
    diffs.append(stl - rep)
    reps.append(rep)
  diffs, reps = np.array(diffs, np.float64), np.array(reps, np.float64)
  moving = np.std(diffs, axis=0) > 0
  se = np.std(diffs[:, moving], axis=0, ddof=1) / np.sqrt(len(diffs))
  t = np.mean(diffs[:, moving], axis=0) / se
  print("coordinates", moving.sum(), "of", moving.size, "max |t|", np.abs(t).max())
  assert moving.sum() > 0.5 * moving.size
  assert np.abs(t).max() < 4.5, np.sort(np.abs(t))[-5:]
  # the mean gradient itself is well away from zero, so the test compares something
  assert np.abs(reps.mean(0)).max() > 10 * (np.abs(reps.std(0)).max() / np.sqrt(len(reps)))


def test_stl_settles_closer_to_the_funnel_at_a_constant_rate():
  """Constant Adam 1e-2 on Neal's funnel, RealNVP's order: with STL the gradient noise
  falls as `q` nears the target, so the jitter floor does too. Measured, KL at 6 points
  after 3,000 steps, seeds 0 and 1: reparameterised means 0.016 and 0.0096, STL 0.00002
  and 0.0036 (one point of 0.016 among its others of at most 0.0034); medians of the 12
  points 0.011 and 0.0002. The medians are compared: single spikes do not decide it."""
  stl = np.concatenate([_floor_kl("latent", seed=s, warm=3000, evals=6, every=300, stl=True)
                        for s in (0, 1)])
  rep = np.concatenate([_floor_kl("latent", seed=s, warm=3000, evals=6, every=300)
                        for s in (0, 1)])
  print("funnel KL at a constant rate, stl / reparameterized:", np.round(stl, 5),
        np.round(rep, 5))
  assert np.median(stl) < 0.2 * np.median(rep), (stl, rep)


@pytest.mark.parametrize("estimator", ["stl", "reparameterized", "auto"])
def test_fit_surrogate_gradient_estimators(estimator):
  """Each estimator of `fit_surrogate` fits the banana (one affine coupling) and repeats
  exactly from its seed; "auto" is STL for a coupling flow (the same losses)."""
  target = targets.banana()

  def fit(name):
    keras.utils.set_random_seed(0)
    model = vi.build_surrogate("realnvp", [2], num_steps=1, hidden=16, initial_scale=2.)
    losses = vi.fit_surrogate(target.unnormalized_log_prob, model, num_steps=300,
                              gradient_estimator=name, seed=3)
    return losses, model

  (losses, model), (again, _) = fit(estimator), fit(estimator)
  np.testing.assert_array_equal(losses, again)
  if estimator == "auto":
    np.testing.assert_array_equal(losses, fit("stl")[0])
  if estimator == "stl":
    assert not np.array_equal(losses, fit("reparameterized")[0])
  est = vi.elbo(target.unnormalized_log_prob, model.distribution(), num_samples=8000, seed=7)
  print(estimator, "banana KL", est.kl(target.log_z))
  assert -4 * est.stderr < est.kl(target.log_z) < 0.08


def test_deferred_refuses_events_of_another_shape_in_one_line():
  """`Deferred(event_shape=...)` checks static trailing dimensions before building; the
  event shape must have `event_ndims` dimensions; unknown dimensions pass."""
  with pytest.raises(ValueError, match=r"event_shape \[2, 3\] must have event_ndims = 1"):
    bijectors.Deferred(lambda: tfb.Identity(), event_ndims=1, event_shape=[2, 3])
  built = []
  b = bijectors.Deferred(lambda: built.append(1) or tfb.Shift([1., 2.]), event_ndims=1,
                         event_shape=[2], name="shifted")
  with pytest.raises(ValueError, match=r"^shifted: expected events of shape \[2\], i\.e\. an "
                                       r"input of shape \[\.\.\., 2\]; got shape \[4, 3\]$"):
    b.forward(tf.zeros([4, 3]))
  assert not built
  np.testing.assert_allclose(b.forward(tf.zeros([4, 2])).numpy(), [[1., 2.]] * 4)
  unknown = tf.function(lambda x: b.inverse(x),
                        input_signature=[tf.TensorSpec([None, None])])
  np.testing.assert_allclose(unknown(tf.ones([1, 2])).numpy(), [[0., -1.]])
