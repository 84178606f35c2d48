"""Keras layer owning a residual block's Lipschitz network and its estimator settings."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.bijectors.logdet import LogDetEstimator
from tfpflows.layers import seeds
from tfpflows.layers.base import BijectorLayer, check_placement

__all__ = ["ResidualLayer", "EXACT_MAX_DIMS"]

# Evaluation uses the exact log-det up to this event size (D backward passes per batch).
EXACT_MAX_DIMS = 16
# Power-iteration steps of the spectral-norm warm-up in `initialize`.
WARMUP_ITERATIONS = 200


class ResidualLayer(BijectorLayer):
  """Owns `g` of a `bijectors.ResidualBlock` (`z = y + g(y)` on the way to the latent).

  Training (`bijector(training=True)`, inside `fit`) uses `train_logdet`, fused with the
  inverse (one evaluation of `g`), with a fresh stateless seed on every call from a Keras
  `SeedGenerator` (its state is a saved weight: a restored model continues the stream;
  evaluation draws from a second generator, so it never moves the training stream).
  Evaluation, `log_prob`, export and plots use `eval_logdet`: by default the exact log-det
  when the event has at most `EXACT_MAX_DIMS` entries, otherwise
  `LogDetEstimator.low_variance()` (20 exact terms, then an unbiased roulette tail, 4 probes).

  Args:
    network: a Keras layer `g`, `Lip(g) < 1` (`tfpflows.layers.lipschitz`); it receives
      `training`, so spectral normalisation updates its power iteration only in training.
    event_shape: one event's shape, `[D]` or `[H, W, C]`.
    train_logdet: `LogDetEstimator` for training (default Residual Flows': roulette, 2 exact
      terms, Neumann gradient).
    eval_logdet: `LogDetEstimator` for evaluation (default above).
    inverse: `bijectors.FixedPointInverse` settings.
    seed: seed of the estimator's seed stream.
    placement: `"density"` (default: `z = y + g(y)` on the way to the latent, exact
      `log_prob` up to the estimator, sampling by the fixed-point iteration) or `"sample"`
      (`tfb.Invert` of the block: `y = z + g(z)` on the way to the data, so `sample` and
      `experimental_sample_and_log_prob` are explicit, for variational inference, and
      `log_prob` of other points uses the fixed point).
  """

  iterative = True   # fixed-point inverse, series: FlowModel runs eager calls as graphs

  def __init__(self, network, event_shape, *, train_logdet=None, eval_logdet=None,
               inverse=None, seed=None, placement="density", **kwargs):
    super().__init__(**kwargs)
    self.placement = check_placement(placement, "ResidualLayer")
    self.network = network
    self.event_shape = tuple(int(d) for d in event_shape)
    self.event_ndims = len(self.event_shape)
    size = int(np.prod(self.event_shape))
    self.train_logdet = train_logdet or LogDetEstimator.resflow()
    self.eval_logdet = eval_logdet or (LogDetEstimator.exact() if size <= EXACT_MAX_DIMS
                                       else LogDetEstimator.low_variance())
    self.inverse_config = inverse or bijectors.FixedPointInverse()
    self.seed_generator = keras.random.SeedGenerator(seed, name="logdet_seed")
    # Evaluation, diagnostics and serving draw from their own stream, so that evaluating
    # (or not, as in a run resumed between evaluations) never shifts the training seeds.
    self.eval_seed_generator = keras.random.SeedGenerator(
        None if seed is None else seed + 7919, name="eval_logdet_seed")

  def _next_seed(self, training):
    generator = self.seed_generator if training else self.eval_seed_generator
    return seeds.next_seed(generator)

  def bijector(self, training=False, logdet=None):
    """The block from the current weights, placed (`Invert`ed for `placement="sample"`)."""
    block = self.block(training=training, logdet=logdet)
    return tfp.bijectors.Invert(block) if self.placement == "sample" else block

  def block(self, training=False, logdet=None):
    """The `ResidualBlock` (`inverse`: `y + g(y)`) from the current weights; `logdet`
    overrides the estimator."""
    estimator = logdet or (self.train_logdet if training else self.eval_logdet)
    seed = self._next_seed(training) if estimator.stochastic else tf.zeros([2], tf.int32)
    parametric = getattr(self.network, "parametric", None)
    if callable(parametric) and self.network.built:
      # Spectral norms computed once for this block, outside the log-det estimator: `g`'s
      # parameters are explicit inputs of its Neumann gradient (a smaller graph).
      g, params = parametric(training=training)
    else:
      g, params = (lambda x: self.network(x, training=training)), None
    return bijectors.ResidualBlock(
        g, logdet=estimator,
        inverse=self.inverse_config, event_ndims=self.event_ndims, seed=seed,
        fuse_logdet=training, g_params=params, name=self.name)

  def warm_up(self):
    """Warms up `g`'s spectral-norm power iteration (`FlowModel.initialize` calls it).

    `WARMUP_ITERATIONS` steps from the random initial vectors, as Residual Flows does at
    construction: afterwards a few steps per training call keep the vectors on the top
    singular vectors (for convolutions, whose top singular values lie close together, a
    cold start leaves the normalised norm several percent above the coefficient).
    """
    update = getattr(self.network, "update_vectors", None)
    if callable(update):
      update(WARMUP_ITERATIONS)   # (eagerly, each layer's loop runs as one compiled graph)

  def lipschitz_bound(self):
    """Upper bound on `Lip(g)` (product of the normalised layer norms), or None."""
    bound = getattr(self.network, "lipschitz_bound", None)
    return bound() if callable(bound) else None

  def diagnose(self, y, report, num_draws=8):
    """Adds this block's health figures to `report`; returns the latent-side output.

    `report[name]` gets: `lipschitz` (bound on Lip(g)), `series_terms` (terms of one draw
    of the training estimator), `logdet_std` (standard deviation of the training
    estimator over `num_draws` draws, averaged over the batch), `inverse_iterations` and
    `inverse_residual` (fixed-point solve of this batch's output). With
    `placement="sample"` the explicit map runs from latent to data: the figures are those
    of the block at this batch's latent `z` (the fixed point of `y`).
    """
    if self.placement == "sample":
      z = self.bijector().inverse(y)       # the fixed point of y
      self._diagnose_block(tf.identity(z), report, num_draws, image=y)
      return z
    return self._diagnose_block(y, report, num_draws)

  def _diagnose_block(self, y, report, num_draws, image=None):
    """The figures of `diagnose` for the block's explicit map `y + g(y)`; returns that map
    of `y` (`image` when the caller has it already)."""
    block = self.block()
    z = block.inverse(y) if image is None else image
    draws, terms = [], None
    for _ in range(num_draws):
      estimate = self.block(logdet=self.train_logdet.replace(neumann_gradient=False))
      _, logdet, n = estimate.inverse_and_log_det(y)
      draws.append(logdet)
      terms = n if terms is None else terms
    _, iterations, residual, _ = block.forward_with_diagnostics(tf.identity(z))
    entry = {
        "series_terms": tf.cast(terms, tf.float32),
        "logdet_std": tf.reduce_mean(tf.math.reduce_std(tf.stack(draws), axis=0)),
        "inverse_iterations": tf.cast(iterations, tf.float32),
        "inverse_residual": tf.reduce_max(residual),
    }
    bound = self.lipschitz_bound()
    if bound is not None:
      entry["lipschitz"] = tf.cast(bound, tf.float32)
    report[self.name] = entry
    return z
