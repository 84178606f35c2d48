"""Planar flow (Rezende & Mohamed, 2015) as a TFP bijector, and its 1-D tanh solver."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import tensor_util

tfb = tfp.bijectors

__all__ = ["Planar", "solve_tanh_equation", "tanh_and_sech2"]

MAX_ITERATIONS = 100


def tanh_and_sech2(a):
  """`(tanh a, sech^2 a)` with `sech^2` accurate where `1 - tanh^2` cancels (large `|a|`)."""
  e = tf.exp(-2. * tf.abs(a))
  return tf.tanh(a), 4. * e / tf.square(1. + e)


def _derivative(x, rho, tau, c, one_plus_rho_tau):
  """`1 + rho tau sech^2(tau x + c)`, written `tanh^2 + sech^2 (1 + rho tau)` (no cancellation)."""
  t, s2 = tanh_and_sech2(tau * x + c)
  return tf.square(t) + s2 * one_plus_rho_tau


def solve_tanh_equation(s, rho, tau, c, one_plus_rho_tau, *, max_iterations=MAX_ITERATIONS):
  r"""Solves :math:`x + \rho \tanh(\tau x + c) = s` for `x`, elementwise (no gradient).

  With :math:`\rho\tau \ge -1` the left side `g` is increasing, and since
  :math:`|g(x) - x| \le |\rho|` the root lies in :math:`[s - |\rho|, s + |\rho|]`.
  Safeguarded Newton: a Newton step from the current point, replaced by bisection of the
  bracket whenever it leaves the bracket; the bracket shrinks at every step. Stops when
  every element's step is below `4 eps (1 + |x|)`, or after `max_iterations`.

  Args:
    s, rho, tau, c: float tensors, broadcast together.
    one_plus_rho_tau: `1 + rho tau` (>= 0), passed separately so a caller can compute it
      without cancellation.
    max_iterations: bound of the `tf.while_loop`.

  Returns:
    `x`, of the broadcast shape, as a constant (wrapped in `tf.stop_gradient`); callers add
    the implicit-function gradient themselves.
  """
  s, rho, tau, c, opr = [tf.stop_gradient(t) for t in (s, rho, tau, c, one_plus_rho_tau)]
  shape = tf.broadcast_dynamic_shape(
      tf.shape(s), tf.broadcast_dynamic_shape(
          tf.shape(rho), tf.broadcast_dynamic_shape(
              tf.shape(tau), tf.broadcast_dynamic_shape(tf.shape(c), tf.shape(opr)))))
  s, rho, tau, c, opr = [tf.broadcast_to(t, shape) for t in (s, rho, tau, c, opr)]
  tol = 4. * dtype_util.eps(s.dtype)
  lo, hi = s - tf.abs(rho), s + tf.abs(rho)
  x = tf.clip_by_value(s - rho * tf.tanh(tau * s + c), lo, hi)   # fixed-point guess
  done = tf.zeros(shape, tf.bool)

  def body(x, lo, hi, done):
    f = x + rho * tf.tanh(tau * x + c) - s
    lo = tf.where(f < 0., x, lo)
    hi = tf.where(f > 0., x, hi)
    newton = x - f / _derivative(x, rho, tau, c, opr)
    inside = (newton > lo) & (newton < hi)          # False for NaN / inf steps
    x_new = tf.where(inside, newton, 0.5 * (lo + hi))
    small = tol * (1. + tf.abs(x))
    converged = ((tf.abs(x_new - x) <= small) | (hi - lo <= small) | tf.equal(f, 0.))
    x = tf.where(done, x, tf.where(tf.equal(f, 0.), x, x_new))
    return x, lo, hi, done | converged

  x, _, _, _ = tf.while_loop(
      lambda x, lo, hi, done: tf.logical_not(tf.reduce_all(done)), body,
      (x, lo, hi, done), maximum_iterations=max_iterations)
  return tf.stop_gradient(x)


def implicit_gradient(x0, residual, derivative):
  """`x0` in value, with the gradient of the root of `residual` (implicit function theorem).

  `x0` is a (constant) root of `residual(x; params) = 0`, which is computed at `x0` with
  the parameters' gradients; `derivative` is its derivative in `x` at `x0`. Returns
  `x0 - (F - sg(F)) / sg(F')`: exactly `x0`, and `dx/dparams = -(dF/dparams) / F'`.
  """
  return x0 - (residual - tf.stop_gradient(residual)) / tf.stop_gradient(derivative)


class Planar(tfb.Bijector):
  r"""Planar flow: a one-hidden-unit residual map with the log-det by the determinant lemma.

  .. math::
      f(z) = z + \hat u\, h(w^\top z + b), \qquad h = \tanh, \qquad
      \log|\det J_f(z)| = \log\left|1 + h'(w^\top z + b)\, w^\top \hat u\right|

  Invertibility needs :math:`w^\top \hat u \ge -1`; it holds for any raw `u`, since
  :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
  :math:`m(a) = -1 + \mathrm{softplus}(a)` gives :math:`w^\top \hat u = m(w^\top u) > -1`
  (the component of `u` along `w` is replaced; the orthogonal part is kept, projected
  twice against cancellation). For `w = 0` the map is the shift :math:`z + u \tanh b`.
  The log-det is computed as :math:`\log(\tanh^2 + \mathrm{sech}^2\, \mathrm{softplus}(w^\top u))`,
  finite for any parameters away from the single hyperplane where a saturated constraint
  makes the Jacobian singular.

  Inverse: with :math:`a = w^\top z`, :math:`w^\top y = a + m \tanh(a + b)` is increasing in
  `a`: it is solved by bracketed Newton (`solve_tanh_equation`, a bounded `tf.while_loop`),
  then :math:`z = y - \hat u \tanh(a + b)`. Its gradient is the implicit-function one (no
  differentiation through the iterations).

  `forward` is the paper's map (latent to sample); `tfpflows.layers.PlanarLayer` puts it on
  the data-to-latent side (`tfb.Invert`) for density estimation.

  Args:
    w: float tensor `[..., D]`.
    u: float tensor `[..., D]`, raw (unconstrained).
    bias: float tensor `[...]`, the scalar `b`.
    max_iterations: bound of the inverse's 1-D solve.

  References:
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
    section 4.1 and appendix A.1.
  """

  def __init__(self, w, u, bias, *, max_iterations=MAX_ITERATIONS, validate_args=False,
               name="planar"):
    parameters = dict(locals())
    if int(max_iterations) < 1:
      raise ValueError(f"Planar: max_iterations must be >= 1, got {max_iterations!r}")
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([w, u, bias], dtype_hint=tf.float32)
      self._w = tensor_util.convert_nonref_to_tensor(w, dtype=dtype, name="w")
      self._u = tensor_util.convert_nonref_to_tensor(u, dtype=dtype, name="u")
      self._bias = tensor_util.convert_nonref_to_tensor(bias, dtype=dtype, name="bias")
      for label, t in (("w", self._w), ("u", self._u)):
        if t.shape.rank == 0:
          raise ValueError(f"Planar: {label} must have shape [..., D], got a scalar")
      dw, du = self._w.shape[-1], self._u.shape[-1]
      if dw is not None and du is not None and dw != du:
        raise ValueError(f"Planar: w and u must have the same size D, got {dw} and {du}")
      self._max_iterations = int(max_iterations)
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
        w=parameter_properties.ParameterProperties(event_ndims=1),
        u=parameter_properties.ParameterProperties(event_ndims=1),
        bias=parameter_properties.ParameterProperties(event_ndims=0))

  @property
  def w(self):
    return self._w

  @property
  def u(self):
    return self._u

  @property
  def bias(self):
    return self._bias

  def constrained(self):
    r"""`(w, u_hat, b, w^T u_hat, 1 + w^T u_hat)`, the last two exact (`m` and `softplus`)."""
    w, u, b = (tf.convert_to_tensor(t) for t in (self._w, self._u, self._bias))
    sq = tf.reduce_sum(tf.square(w), axis=-1)
    nonzero = sq > 0.
    inv_sq = tf.where(nonzero, 1. / tf.where(nonzero, sq, 1.), 0.)[..., None]
    wu = tf.reduce_sum(w * u, axis=-1)
    u_perp = u - wu[..., None] * inv_sq * w
    u_perp -= tf.reduce_sum(w * u_perp, axis=-1, keepdims=True) * inv_sq * w  # twice is enough
    one_plus_wu_hat = tf.where(nonzero, tf.math.softplus(wu), 1.)
    wu_hat = one_plus_wu_hat - 1.                 # m(w^T u); 0 when w = 0 (a pure shift)
    u_hat = u_perp + wu_hat[..., None] * inv_sq * w
    return w, u_hat, b, wu_hat, one_plus_wu_hat

  def _forward_and_fldj(self, z):
    w, u_hat, b, _, opw = self.constrained()
    t, s2 = tanh_and_sech2(tf.reduce_sum(w * z, axis=-1) + b)
    return z + u_hat * t[..., None], tf.math.log(tf.square(t) + s2 * opw)

  def _forward(self, z):
    y, fldj = self._forward_and_fldj(z)
    self._cache.forward_attributes(z)["ildj"] = -fldj
    return y

  def _forward_log_det_jacobian(self, z):
    return self._forward_and_fldj(z)[1]

  def _inverse(self, y):
    w, u_hat, b, wu_hat, opw = self.constrained()
    s = tf.reduce_sum(w * y, axis=-1)
    one = tf.ones([], y.dtype)
    a0 = solve_tanh_equation(s, wu_hat, one, b, opw, max_iterations=self._max_iterations)
    t0, s20 = tanh_and_sech2(a0 + b)
    a = implicit_gradient(a0, a0 + wu_hat * tf.tanh(a0 + b) - s, tf.square(t0) + s20 * opw)
    t, s2 = tanh_and_sech2(a + b)
    self._cache.inverse_attributes(y)["ildj"] = -tf.math.log(tf.square(t) + s2 * opw)
    return y - u_hat * t[..., None]
