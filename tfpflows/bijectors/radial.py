"""Radial flow (Rezende & Mohamed, 2015) as a TFP bijector, with a closed-form inverse."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import tensor_util

tfb = tfp.bijectors

__all__ = ["Radial"]


def _safe_norm(d):
  """`||d||` over the last axis, with a zero (not NaN) gradient at `d = 0`."""
  sq = tf.reduce_sum(tf.square(d), axis=-1)
  positive = sq > 0.
  return tf.where(positive, tf.sqrt(tf.where(positive, sq, tf.ones_like(sq))),
                  tf.zeros_like(sq))


def _safe_div(num, den):
  """`num / den`, and 0 where `den == 0` (with finite gradients)."""
  nonzero = tf.not_equal(den, 0.)
  return tf.where(nonzero, num / tf.where(nonzero, den, tf.ones_like(den)), tf.zeros_like(num))


class Radial(tfb.Bijector):
  r"""Radial flow: contraction or expansion around a reference point `z0`.

  .. math::
      f(z) = z + \beta\, h(\alpha, r)\,(z - z_0), \qquad r = \|z - z_0\|, \qquad
      h(\alpha, r) = \frac{1}{\alpha + r},

      \log|\det J_f(z)| = (D - 1)\log(1 + \beta h) + \log(1 + \beta h + \beta h'(r)\, r)

  with :math:`\alpha = \mathrm{softplus}(\tilde\alpha) > 0` and
  :math:`\beta = -\alpha + \mathrm{softplus}(\tilde\beta) \ge -\alpha`, which makes `f`
  invertible for any raw :math:`\tilde\alpha, \tilde\beta`. Written without cancellation,
  :math:`1 + \beta h = (s + r)/(\alpha + r)` and
  :math:`1 + \beta h + \beta h' r = (\alpha s + 2\alpha r + r^2)/(\alpha + r)^2`,
  :math:`s = \mathrm{softplus}(\tilde\beta) = \alpha + \beta`.

  Inverse in closed form: :math:`y - z_0 = (1 + \beta h(r))(z - z_0)`, so
  :math:`\rho = \|y - z_0\| = r (s + r)/(\alpha + r)`, whose positive root is
  :math:`r = \big(\sqrt{p^2 + 4\alpha\rho} - p\big)/2`, :math:`p = s - \rho` (computed as
  :math:`2\alpha\rho/(p + \sqrt{\cdot})` when :math:`p \ge 0`), then
  :math:`z = z_0 + (y - z_0)(\alpha + r)/(s + r)`.

  Args:
    z0: float tensor `[..., D]`, the reference point.
    raw_alpha: float tensor `[...]`, unconstrained.
    raw_beta: float tensor `[...]`, unconstrained.

  References:
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
    section 4.1 and appendix A.2.
  """

  def __init__(self, z0, raw_alpha, raw_beta, *, validate_args=False, name="radial"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([z0, raw_alpha, raw_beta], dtype_hint=tf.float32)
      self._z0 = tensor_util.convert_nonref_to_tensor(z0, dtype=dtype, name="z0")
      self._raw_alpha = tensor_util.convert_nonref_to_tensor(raw_alpha, dtype=dtype,
                                                             name="raw_alpha")
      self._raw_beta = tensor_util.convert_nonref_to_tensor(raw_beta, dtype=dtype,
                                                            name="raw_beta")
      if self._z0.shape.rank == 0:
        raise ValueError("Radial: z0 must have shape [..., D], got a scalar")
      super().__init__(
          forward_min_event_ndims=1,
          is_constant_jacobian=False,
          validate_args=validate_args,
          dtype=dtype,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict(
        z0=parameter_properties.ParameterProperties(event_ndims=1),
        raw_alpha=parameter_properties.ParameterProperties(event_ndims=0),
        raw_beta=parameter_properties.ParameterProperties(event_ndims=0))

  @property
  def z0(self):
    return self._z0

  @property
  def raw_alpha(self):
    return self._raw_alpha

  @property
  def raw_beta(self):
    return self._raw_beta

  def constrained(self):
    """`(z0, alpha, beta, alpha + beta)`, the last computed as `softplus(raw_beta) >= 0`."""
    alpha = tf.math.softplus(tf.convert_to_tensor(self._raw_alpha))
    s = tf.math.softplus(tf.convert_to_tensor(self._raw_beta))
    return tf.convert_to_tensor(self._z0), alpha, s - alpha, s

  def _log_det(self, r, d):
    """`log|det J_f|` at radius `r` (the latent side's), dimension `d`."""
    _, alpha, _, s = self.constrained()
    log_a_r = tf.math.log(alpha + r)
    return ((d - 1.) * (tf.math.log(s + r) - log_a_r)
            + tf.math.log(alpha * s + (2. * alpha + r) * r) - 2. * log_a_r)

  @staticmethod
  def _dim(x):
    return tf.cast(tf.shape(x)[-1], x.dtype)

  def _forward(self, z):
    z0, alpha, beta, _ = self.constrained()
    d = z - z0
    r = _safe_norm(d)
    return z + (beta / (alpha + r))[..., None] * d

  def _forward_log_det_jacobian(self, z):
    return self._log_det(_safe_norm(z - self.constrained()[0]), self._dim(z))

  def _radius(self, y):
    """(y - z0, r = ||z - z0||) from `y`: the positive root of the quadratic."""
    z0, alpha, _, s = self.constrained()
    e = y - z0
    rho = _safe_norm(e)
    p = s - rho
    disc = tf.sqrt(tf.square(p) + 4. * alpha * rho)
    r = tf.where(p >= 0., _safe_div(2. * alpha * rho, p + disc), 0.5 * (disc - p))
    return e, r

  def _inverse(self, y):
    z0, alpha, _, s = self.constrained()
    e, r = self._radius(y)
    # e = 0 where s + r = 0 (then rho = r = 0), so the safe 0 there is exact.
    return z0 + _safe_div(alpha + r, s + r)[..., None] * e

  def _inverse_log_det_jacobian(self, y):
    return -self._log_det(self._radius(y)[1], self._dim(y))
