"""Multi-scale factor-out with a learned conditional prior (RealNVP, Glow)."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["FactorOut"]


class FactorOut(tfb.Bijector):
  r"""Splits off part of the channels early, with a prior conditioned on the rest.

  The data event `y = [y_h, y_z]` is split along its last axis into the part that goes on
  through the `inner` flow (`y_h`, the first `C - C_z` channels) and the factored-out part
  `y_z` (the last `C_z`), whose Gaussian prior has mean and log-scale predicted from
  `y_h` by `prior_fn` (Glow's zero-initialised convolution):

  .. math::
      \text{inverse:}\quad e_h = \text{inner}^{-1}(y_h),\quad
      e_z = (y_z - \mu(y_h)) \odot e^{-\lambda(y_h)},\quad (\mu, \lambda) = \text{prior\_fn}(y_h)

      \text{forward:}\quad y_h = \text{inner}(e_h),\quad y_z = \mu(y_h) + e^{\lambda(y_h)} \odot e_z

      \log|\det J_{f^{-1}}| = \log|\det J_{\text{inner}^{-1}}(y_h)| - \sum \lambda(y_h)

  With a standard normal base on the latent `[e_h, e_z]`, `e_z`'s term is exactly the
  log-density of `y_z` under `N(mu(y_h), exp(lambda(y_h)))`: this bijector is the
  multi-scale architecture written as one invertible map, so the whole model remains a
  `tfd.TransformedDistribution`. Sampling at temperature `T` scales the base, hence every
  level's prior standard deviation, by `T`, as in Glow.

  Args:
    inner: a shape-preserving bijector on `[..., H, W, C - C_z]` (or `[..., D - C_z]`).
    prior_fn: callable `y_h (rank 4 or 2) -> [..., 2 * C_z]` (mean, then log-scale).
    num_factored: `C_z`; default half of the channels, known from the first call.
    event_ndims: 1 for vectors, 3 for images.

  References:
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, 3.6.
    Kingma & Dhariwal, "Glow", NeurIPS 2018, figure 2 and the `split2d` of its code.
  """

  def __init__(self, inner, prior_fn, *, num_factored=None, event_ndims=3,
               validate_args=False, name="factor_out"):
    parameters = dict(locals())
    if not callable(prior_fn):
      raise TypeError(f"FactorOut: prior_fn must be callable, got {type(prior_fn).__name__}")
    with tf.name_scope(name) as name:
      self._inner = inner
      self._prior_fn = prior_fn
      self._num_factored = num_factored
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "FactorOut")
      super().__init__(
          forward_min_event_ndims=event_ndims,
          is_constant_jacobian=False,
          validate_args=validate_args,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def inner(self):
    return self._inner

  def _split(self, v):
    c = v.shape[-1]
    if c is None or c < 2:
      raise ValueError(f"FactorOut: need a static channel dimension >= 2, got {c}")
    n_z = self._num_factored or c // 2
    return tf.split(v, [c - n_z, n_z], axis=-1)

  def _prior(self, y_h):
    out = _shapes.call_on_events(self._prior_fn, y_h, self._event_ndims)
    mean, log_scale = tf.split(out, 2, axis=-1)
    return mean, log_scale

  def _forward(self, x):
    e_h, e_z = self._split(x)
    y_h = self._inner.forward(e_h)
    mean, log_scale = self._prior(y_h)
    y = tf.concat([y_h, mean + tf.exp(log_scale) * e_z], axis=-1)
    self._cache.forward_attributes(x)["ildj"] = (
        -self._inner.forward_log_det_jacobian(e_h, event_ndims=self._event_ndims)
        - _shapes.sum_event(log_scale, self._event_ndims))
    return y

  def _inverse(self, y):
    x, ildj = self._inverse_and_ildj(y)
    self._cache.inverse_attributes(y)["ildj"] = ildj
    return x

  def _inverse_and_ildj(self, y):
    y_h, y_z = self._split(y)
    mean, log_scale = self._prior(y_h)
    e_z = (y_z - mean) * tf.exp(-log_scale)
    e_h = self._inner.inverse(y_h)
    ildj = (self._inner.inverse_log_det_jacobian(y_h, event_ndims=self._event_ndims)
            - _shapes.sum_event(log_scale, self._event_ndims))
    return tf.concat([e_h, e_z], axis=-1), ildj

  def _inverse_log_det_jacobian(self, y):
    return self._inverse_and_ildj(y)[1]
