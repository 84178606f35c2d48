r"""Invertible residual block `z = y + g(y)`, `Lip(g) < 1` (i-ResNet, Residual Flows)."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import samplers

from tfpflows.bijectors import _shapes
from tfpflows.bijectors import fixed_point as fp
from tfpflows.bijectors import logdet as ld

tfb = tfp.bijectors

__all__ = ["ResidualBlock"]


def _stateless_seed(seed):
  """int32 `[2]` stateless seed: an int `s` is `[0, s]`; None draws one (statefully)."""
  if seed is None:
    return samplers.sanitize_seed(None, salt="residual_block")
  if isinstance(seed, int):
    return tf.constant([0, seed], tf.int32)
  return tf.cast(tf.convert_to_tensor(seed), tf.int32)


class ResidualBlock(tfb.Bijector):
  r"""Residual block whose data-to-latent map is `z = y + g(y)`, with `Lip(g) < 1`.

  .. math::
      \text{inverse (data to latent):}\quad z = y + g(y),\qquad
      \log|\det J_{f^{-1}}(y)| = \log\det(I + J_g(y))
      = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k}\operatorname{tr}(J_g(y)^k)

      \text{forward (latent to data):}\quad y_{k+1} = z - g(y_k)\ \text{(fixed point)}

  The map is invertible because `g` is a contraction (Behrmann et al. 2019, Theorem 1);
  `g` must be made so (spectral normalisation, `tfpflows.layers.lipschitz`): this bijector
  does not check it, but its inverse reports non-convergence (see `fixed_point`).

  The log-determinant is estimated as `logdet` says (`LogDetEstimator`: exact, truncated
  series, or unbiased Russian roulette, with the memory-efficient Neumann gradient), from
  the stateless `seed`. One instance is one draw: the same instance (or an equal one, with
  the same seed) returns the same estimate, which TFP's cache may hand back; a new seed
  gives a fresh draw. With `seed=None` each instance draws its own seed when it is built
  (inside `tf.function`, on each execution), so no two instances share an estimate. The
  Keras layer builds a new instance, with a new seed, on every call.

  With `fuse_logdet=True` (the training setting) `inverse` evaluates `g` once and computes
  the log-det estimate in the same pass, keeping it in TFP's cache for `log_prob`; with
  False `inverse` is one evaluation of `g` and the log-det is computed on request.

  Args:
    g: callable on `[B, *event]` batches (a Keras layer or any function), `Lip(g) < 1`.
    logdet: a `LogDetEstimator` (default: Residual Flows' training setting).
    inverse: a `FixedPointInverse` for `forward`.
    event_ndims: 1 for vectors, 3 for images.
    seed: stateless seed (int or int32 `[2]` tensor) of the estimator, or None.
    fuse_logdet: compute the log-det within `inverse` (see above).
    g_params: optional tuple of tensors; then `g` is called as `g(x, g_params)`. The
      Neumann gradient differentiates `g` in these explicit inputs only, and whatever made
      them (a spectral normalisation of the variables) is backpropagated once, outside
      the estimator: the same gradients from a much smaller graph
      (`tfpflows.layers.LipschitzNetwork.parametric` gives such a pair).

  References:
    Behrmann et al., "Invertible Residual Networks", ICML 2019.
    Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019.
  """

  def __init__(self, g, *, logdet=None, inverse=None, event_ndims=1, seed=None,
               fuse_logdet=False, g_params=None, validate_args=False,
               name="residual_block"):
    parameters = dict(locals())
    if not callable(g):
      raise TypeError(f"ResidualBlock: g must be callable, got {type(g).__name__}")
    logdet = ld.LogDetEstimator() if logdet is None else logdet
    inverse = fp.FixedPointInverse() if inverse is None else inverse
    if not isinstance(logdet, ld.LogDetEstimator):
      raise TypeError(f"ResidualBlock: logdet must be a LogDetEstimator, got "
                      f"{type(logdet).__name__}")
    if not isinstance(inverse, fp.FixedPointInverse):
      raise TypeError(f"ResidualBlock: inverse must be a FixedPointInverse, got "
                      f"{type(inverse).__name__}")
    with tf.name_scope(name) as name:
      self._g = g
      self._g_params = None if g_params is None else tuple(g_params)
      parameters["g_params"] = self._g_params
      self._logdet = logdet
      self._inverse_config = inverse
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "ResidualBlock")
      self._seed = _stateless_seed(seed)
      # The drawn seed, not None, goes into `parameters`, which key TFP's cache: two
      # instances built with seed=None must not share an estimate.
      parameters["seed"] = self._seed
      self._fuse = bool(fuse_logdet)
      super().__init__(forward_min_event_ndims=event_ndims, validate_args=validate_args,
                       parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def g(self):
    return self._g

  @property
  def logdet_estimator(self):
    return self._logdet

  @property
  def seed(self):
    return self._seed

  # -- the two directions, with diagnostics --------------------------------------------

  def _g_events(self, x):
    if self._g_params is not None:
      return tf.cast(self._g(x, self._g_params), x.dtype)
    return tf.cast(self._g(x), x.dtype)

  def _g_of_params(self, x, params):
    return tf.cast(self._g(x, params), x.dtype)

  def inverse_and_log_det(self, y):
    """`(z = y + g(y), log det(I + J_g(y)) estimate, number of series terms)`."""
    y = tf.convert_to_tensor(y)
    flat, batch_shape = _shapes.flatten_batch(y, self._event_ndims)
    if self._g_params is None:
      gy, logdet, n = ld.residual_log_det(self._g_events, flat, self._logdet, self._seed,
                                          self._event_ndims)
    else:
      gy, logdet, n = ld.residual_log_det(self._g_of_params, flat, self._logdet, self._seed,
                                          self._event_ndims, params=self._g_params)
    z = flat + gy
    return (_shapes.unflatten_batch(z, batch_shape, self._event_ndims),
            _shapes.unflatten_batch(logdet, batch_shape, 0), n)

  def forward_with_diagnostics(self, x):
    """Fixed-point solve of `y + g(y) = x`: `(y, iterations, residual [batch], converged)`.

    Does not raise: examples that did not converge are NaN, `converged` False.
    """
    x = tf.convert_to_tensor(x)
    flat, batch_shape = _shapes.flatten_batch(x, self._event_ndims)
    y, iterations, residual, converged = fp.fixed_point_solve(
        self._g_events, flat, self._inverse_config, self._event_ndims)
    return (_shapes.unflatten_batch(y, batch_shape, self._event_ndims), iterations,
            _shapes.unflatten_batch(residual, batch_shape, 0),
            _shapes.unflatten_batch(converged, batch_shape, 0))

  # -- TFP hooks -----------------------------------------------------------------------

  def _forward(self, x):
    y, iterations, residual, converged = self.forward_with_diagnostics(x)
    if self._inverse_config.on_failure == "raise":
      with tf.control_dependencies([fp.report_failure(converged, residual, iterations,
                                                      self._inverse_config)]):
        y = tf.identity(y)
    return y

  def _inverse(self, y):
    if not self._fuse:
      flat, batch_shape = _shapes.flatten_batch(y, self._event_ndims)
      z = flat + self._g_events(flat)
      return _shapes.unflatten_batch(z, batch_shape, self._event_ndims)
    z, logdet, _ = self.inverse_and_log_det(y)
    self._cache.inverse_attributes(y)["ildj"] = logdet
    return z

  def _inverse_log_det_jacobian(self, y):
    return self.inverse_and_log_det(y)[1]
