r"""Variational inference with the flows: surrogate posteriors for `tfp.vi`, the ELBO, log Z.

A flow surrogate :math:`q(x) = N(z; 0, I)\,|\det J_f(z)|^{-1}`, :math:`x = f(z)`, is fitted
to an unnormalised target :math:`\tilde p` by maximising

.. math::
    \mathrm{ELBO}(q) = E_{q}[\log \tilde p(x) - \log q(x)] = \log Z - \mathrm{KL}(q \,\|\, p)

with reparameterised samples (Rezende & Mohamed 2015). Each step draws `x = f(z)` and
:math:`\log q(x)` together (`experimental_sample_and_log_prob`), so the cheap, exact
direction of every map must be the sampling one: `build_surrogate` builds the flow with
`placement="sample"` for the families explicit in one direction only (planar, radial,
Sylvester, i-ResNet, Residual Flow; the coupling flows are explicit both ways), and
starts every ActNorm at a fixed value instead of a data-dependent initialisation (there
are no data).

Typical use, with TFP's own optimiser loop::

    model = tfpflows.vi.build_surrogate("realnvp", [2], initial_scale=2.)
    q = model.distribution(training=True)            # live: built once, trains every weight
    losses = tfp.vi.fit_surrogate_posterior(target_log_prob_fn, q,
                                            keras.optimizers.Adam(1e-2), num_steps=2000)
    estimate = tfpflows.vi.elbo(target_log_prob_fn, model.distribution())

(`fit_surrogate` is that call with the optimiser built and a non-finite check, and by
default the sticking-the-landing gradient for coupling flows, below.)

The sticking-the-landing gradient (Roeder, Wu & Duvenaud 2017) needs a copy of `q` whose
weights pass no gradient: `model.distribution(training=True, stop_gradient=True)`, live
like the other, is TFP's `stopped_surrogate_posterior`::

    loss_fn = lambda: tfp.vi.monte_carlo_variational_loss(
        target_log_prob_fn, q, sample_size=64,
        gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
        stopped_surrogate_posterior=model.distribution(training=True, stop_gradient=True))
    tfp.math.minimize(loss_fn, num_steps=2000, optimizer=keras.optimizers.Adam(1e-2))

References:
  Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
  van den Berg et al., "Sylvester Normalizing Flows for Variational Inference", UAI 2018.
  Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
  NeurIPS 2016.
  Roeder, Wu & Duvenaud, "Sticking the Landing: Simple, Lower-Variance Gradient Estimators
  for Variational Inference", NeurIPS 2017.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import samplers

from tfpflows.checkpoint import NonFiniteError
from tfpflows.layers.actnorm import ActNormLayer
from tfpflows.models.architectures import PLACED_NAMES, build_flow

__all__ = ["ElboEstimate", "build_surrogate", "elbo", "fit_surrogate"]


def _as_vector(value, d, label):
  try:
    v = np.broadcast_to(np.asarray(value, np.float64), (d,)) if np.ndim(value) <= 1 else None
  except (TypeError, ValueError):
    v = None
  if v is None:
    raise ValueError(f"build_surrogate: {label} must be a number or a vector of length {d}; "
                     f"got shape {list(np.shape(value))}")
  if not np.all(np.isfinite(v)):
    raise ValueError(f"build_surrogate: {label} must be finite; got {value!r}")
  return v


def build_surrogate(name, event_shape, *, num_steps=None, hidden=None, seed=0,
                    initial_loc=0., initial_scale=1., **kwargs):
  r"""A `FlowModel` to use as a surrogate posterior on `R^D`, placed and initialised for VI.

  * Placement: `"sample"` for planar, radial, Sylvester, i-ResNet and Residual Flow (the
    paper's map on the latent-to-data side, so `sample` and
    `experimental_sample_and_log_prob` are exact and cheap); coupling flows as they are.
  * Affine couplings (Glow, RealNVP): `affine_scale="exp"` unless given, the soft-clamped
    scale `exp(10 tanh(h / 10))` that contracts as freely as it expands (Glow's default
    `sigmoid(h + 2)` can only expand on the sampling side, and a funnel's neck needs
    contraction), and that starts as the identity; and one ActNorm
    (`step_actnorm=False`): with free coupling scales the per-step ActNorms only duplicate
    scale parameters, and Adam moves duplicates all at once (measured on Neal's funnel,
    RealNVP with 4 steps, 5 seeds of 20 s, in Glow's coupling order: mean KL 0.054 with
    them, 0.025 without).
  * RealNVP: `shift_side="latent"` unless given (RealNVP's own coupling order,
    `z_b = y_b s + t`, and the one ActNorm next to the base): on the sampling side every
    shift is in latent units and multiplied by the local scale, as in an inverse
    autoregressive flow. With Glow's order the shifts are in data units, and Adam's jitter
    of about one learning rate moves mass across a narrow part of the target: on Neal's
    funnel (neck width `e^{-4.5}`), RealNVP with 4 steps at a constant Adam 1e-2, the KL
    at 8 points after 6,000 steps averaged 0.070, 0.023 and 0.066 (seeds 0 to 2; spikes
    to 0.18) in Glow's order and 0.0065, 0.013 and 0.0085 in RealNVP's
    (`tests/test_vi.py`, the funnel at a constant rate). Glow keeps `"data"` (and refuses `"latent"`): its 1x1
    convolutions would rotate the initial Gaussian below. Weights saved with
    `save_weights` from a RealNVP surrogate built before this default (Glow's order)
    load only into `build_surrogate(..., shift_side="data")`; `.keras` files keep their
    order.
  * Initialisation without data: every ActNorm is the identity except the one nearest the
    data, which starts at `x = initial_loc + initial_scale * (.)`, and all are marked
    initialised. So `q` starts near
    :math:`N(\text{initial\_loc}, \text{initial\_scale}^2 I)`: exactly for NICE, RealNVP
    and Glow (couplings start as identities, 1x1 convolutions as rotations, which leave the
    standard normal as it is); planar, radial and Sylvester maps start near the identity,
    residual blocks as small contractions.

  `model.distribution(training=True)` is the surrogate to train (for residual flows, the
  unbiased log-det estimator); `model.distribution()` the one to evaluate.

  Args:
    name: a `build_flow` family.
    event_shape: `[D]`, `D >= 2`.
    num_steps, hidden, seed: as in `build_flow` (`**kwargs` too, e.g. `permutation`).
    initial_loc: number or `[D]` vector.
    initial_scale: number or `[D]` vector, `> 0`.

  Raises:
    ValueError: (one line) an image shape, a bad size, a non-positive or non-finite scale,
      `shift_side="latent"` for Glow.
  """
  if not isinstance(event_shape, (list, tuple)) or len(event_shape) != 1:
    raise ValueError(f"build_surrogate: event_shape must be [D] (a vector); got "
                     f"{event_shape!r}")
  if "placement" in kwargs:
    raise ValueError("build_surrogate: placement is chosen here (the sampling side); use "
                     "build_flow to place maps yourself")
  d = int(event_shape[0])
  loc = _as_vector(initial_loc, d, "initial_loc")
  scale = _as_vector(initial_scale, d, "initial_scale")
  if np.any(scale <= 0):
    raise ValueError(f"build_surrogate: initial_scale must be > 0; got {initial_scale!r}")
  placement = "sample" if name in PLACED_NAMES else "density"
  if name in ("glow", "realnvp"):
    kwargs.setdefault("affine_scale", "exp")
    kwargs.setdefault("step_actnorm", False)
  if name == "realnvp":
    kwargs.setdefault("shift_side", "latent")
  if name == "glow" and kwargs.get("shift_side") == "latent":
    raise ValueError("build_surrogate: shift_side='latent' with glow would put its 1x1 "
                     "convolutions between the initial scale and the data (a rotated start); "
                     "use realnvp, or build_flow to place it yourself")
  model = build_flow(name, [d], num_steps=num_steps, hidden=hidden, seed=seed,
                     placement=placement, **kwargs)
  actnorms = [l for l in _data_side_first(model.flow) if isinstance(l, ActNormLayer)]
  for k, layer in enumerate(actnorms):
    layer.loc.assign(loc.astype("float32") if k == 0 else np.zeros(d, "float32"))
    layer.log_scale.assign(np.log(scale).astype("float32") if k == 0
                           else np.zeros(d, "float32"))
    layer.initialized.assign(1)
  return model


def _check_positive_int(owner, label, value, minimum=1):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{owner}: {label} must be {kind}; got {value!r}")


def _data_side_first(layer):
  """The flow's layers in data-to-latent order (the order of `ChainLayer`s' lists)."""
  yield layer
  for child in getattr(layer, "flow_layers", ()):
    yield from _data_side_first(child)
  inner = getattr(layer, "inner", None)
  if inner is not None:
    yield from _data_side_first(inner)


GRADIENT_ESTIMATORS = ("auto", "stl", "reparameterized")


def fit_surrogate(target_log_prob_fn, model, *, num_steps, learning_rate=1e-2, optimizer=None,
                  sample_size=64, seed=0, jit_compile=False, gradient_estimator="auto",
                  verbose=0):
  r"""Fits `model` as a surrogate posterior of `target_log_prob_fn` by reverse KL.

  Each step is the one `tfp.vi.fit_surrogate_posterior` runs, with the gradient estimator
  chosen below: the loss `tfp.vi.monte_carlo_variational_loss` (:math:`-\mathrm{ELBO}`
  from `sample_size` reparameterised draws of `model.distribution(training=True)`), its
  gradient and an optimiser update (`keras.optimizers.Adam(learning_rate)` unless
  `optimizer` is given). Before 2026-12-08 every model got the reparameterised gradient;
  the default `"auto"` now gives coupling flows STL, so a seeded run of one repeats
  differently from then (pass `gradient_estimator="reparameterized"` for the old step).

  The gradient, for draws :math:`x_\theta = f_\theta(z)`:

  * `"stl"`, sticking the landing (Roeder, Wu & Duvenaud 2017; TFP's
    `DOUBLY_REPARAMETERIZED` with one importance sample):
    :math:`\nabla_\theta[\log \tilde p(x_\theta) - \log q_{\bar\theta}(x_\theta)]`,
    :math:`\bar\theta` the weights with their gradient stopped
    (`model.distribution(training=True, stop_gradient=True)`). It drops the score term
    :math:`\nabla_\theta \log q_\theta(x)`, whose mean is zero, so its mean is the
    ELBO's gradient; and it is exactly zero when `q` equals the target, so at a constant
    learning rate the fit settles much closer to the target. Each step also evaluates
    `log q` of its draws through the inverse of the flow: about the cost of a second pass
    for couplings, an iterative inverse for maps placed on the sampling side (planar,
    radial, Sylvester, residual), where `"reparameterized"` is cheaper per step.
  * `"reparameterized"`: the plain reparameterised gradient of the ELBO estimate (what
    `tfp.vi.fit_surrogate_posterior` runs).
  * `"auto"` (default): `"stl"` for flows whose inverse is explicit (NICE, RealNVP, Glow),
    `"reparameterized"` for those that would invert iteratively.
  Unlike TFP's loop it traces one step function (not the whole loop), draws step `k`'s
  samples from a stateless seed derived from `(seed, k)` (the same seed repeats the run),
  shows a progress bar with `verbose=1`, and applies no update whose loss or gradient is
  not finite: it stops there, with the weights of the last finite step.

  Returns:
    The per-step losses (`-ELBO` estimates), a numpy array of `num_steps`.

  Raises:
    NonFiniteError: a loss or gradient became NaN or infinite (the step is named; the
      weights are those before it).
    ValueError: (one line) `num_steps` or `sample_size` not a positive integer, an
      unknown `gradient_estimator`.
  """
  _check_positive_int("fit_surrogate", "num_steps", num_steps)
  _check_positive_int("fit_surrogate", "sample_size", sample_size)
  if gradient_estimator not in GRADIENT_ESTIMATORS:
    raise ValueError(f"fit_surrogate: gradient_estimator must be one of "
                     f"{', '.join(map(repr, GRADIENT_ESTIMATORS))}; got {gradient_estimator!r}")
  if optimizer is None:
    optimizer = keras.optimizers.Adam(learning_rate)
  q = model.distribution(training=True)
  estimator = {}
  if gradient_estimator == "auto":
    gradient_estimator = "reparameterized" if model._iterative() else "stl"
  if gradient_estimator == "stl":
    estimator = dict(gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
                     stopped_surrogate_posterior=model.distribution(training=True,
                                                                    stop_gradient=True))
  variables = model.tf_trainable_variables
  optimizer.build(variables)
  base_seed = tfp.random.sanitize_seed(seed)

  @tf.function(jit_compile=jit_compile, autograph=False)
  def step(k):
    step_seed = samplers.fold_in(base_seed, tf.cast(k, tf.int32))
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(variables)
      loss = tfp.vi.monte_carlo_variational_loss(target_log_prob_fn, q,
                                                 sample_size=int(sample_size), seed=step_seed,
                                                 **estimator)
    grads = tape.gradient(loss, variables)
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads
                            if g is not None] + [tf.math.is_finite(loss)])
    safe = [tf.where(finite, g, tf.zeros_like(g)) if g is not None else None for g in grads]
    def update():
      optimizer.apply_gradients(zip(safe, variables))
      return tf.constant(0)

    # A zero gradient would still move Adam's weights (momentum): skip the update instead.
    tf.cond(finite, update, lambda: tf.constant(0))
    return loss, finite

  progress = keras.utils.Progbar(int(num_steps), stateful_metrics=["loss"]) if verbose else None
  losses = np.empty(int(num_steps), np.float64)
  for k in range(int(num_steps)):
    loss, finite = step(tf.constant(k, tf.int64))
    losses[k] = float(loss)
    if not bool(finite):
      raise NonFiniteError(f"fit_surrogate: the ELBO or its gradient became non-finite at "
                           f"step {k}; the weights are those before it; try a lower "
                           f"learning_rate or another initial_scale")
    if progress is not None:
      progress.update(k + 1, [("loss", losses[k])])
  return losses


@dataclasses.dataclass(frozen=True)
class ElboEstimate:
  r"""Monte Carlo estimates from `n` samples of `q`, with `w = log p~(x) - log q(x)`.

  Attributes:
    elbo: `mean(w)`, unbiased for :math:`E_q[\log \tilde p - \log q]`.
    stderr: its standard error, `std(w) / sqrt(n)`.
    log_z: `log mean(exp(w))`, the importance-sampled estimate of `log Z` (a lower bound in
      expectation, tight when `q` covers `p`).
    num_samples: `n`.
  """
  elbo: float
  stderr: float
  log_z: float
  num_samples: int

  def kl(self, log_z):
    """`KL(q || p) = log Z - ELBO`, for a target with known `log_z`."""
    return log_z - self.elbo


def elbo(target_log_prob_fn, surrogate, *, num_samples=20000, batch_size=5000, seed=0):
  """The ELBO of any TFP `surrogate` (ours or not) with a standard error, and IS `log Z`.

  Samples `num_samples` draws in batches of `batch_size` with
  `surrogate.experimental_sample_and_log_prob` from stateless seeds derived from `seed`.
  """
  _check_positive_int("elbo", "num_samples", num_samples, minimum=2)
  _check_positive_int("elbo", "batch_size", batch_size)
  num_batches = -(-num_samples // batch_size)
  seeds = tf.unstack(tf.reshape(tfp.random.split_seed(tfp.random.sanitize_seed(seed),
                                                      n=num_batches), [num_batches, 2]))

  @tf.function(autograph=False)
  def weights(n, s):
    x, log_q = surrogate.experimental_sample_and_log_prob(n, seed=s)
    return target_log_prob_fn(x) - log_q

  w, left = [], num_samples
  for s in seeds:
    n = min(batch_size, left)
    w.append(np.asarray(weights(tf.constant(n), s), np.float64))
    left -= n
  w = np.concatenate(w)
  if not np.all(np.isfinite(w)):
    raise NonFiniteError(f"elbo: {int(np.sum(~np.isfinite(w)))} of {num_samples} samples "
                         f"have a non-finite log-density ratio")
  m = float(np.max(w))
  return ElboEstimate(elbo=float(np.mean(w)), stderr=float(np.std(w, ddof=1) / math.sqrt(w.size)),
                      log_z=m + float(np.log(np.mean(np.exp(w - m)))), num_samples=int(w.size))
