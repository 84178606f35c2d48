"""Invertible 1x1 convolutions (Glow), plain and LU-decomposed."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import tensor_util

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["Invertible1x1Conv", "LUInvertible1x1Conv", "lu_weight"]


class Invertible1x1Conv(tfb.Bijector):
  r"""Channel mixing by an invertible matrix at every position (Glow, section 3.2).

  .. math::
      z_{p} = W y_{p} \;\text{(inverse, data to latent)}, \qquad
      y_{p} = W^{-1} z_{p} \;\text{(forward)}, \qquad
      \log|\det J_{f^{-1}}| = P \log|\det W|

  for every position `p` of the event (`P = H * W` for images, 1 for vectors `[D]`, where
  the 1x1 convolution is a dense invertible linear map). `log|det W| = sum_i log|R_ii|`
  from the QR decomposition `W = QR` (O(C^3), fine for Glow's channel counts; unlike
  `slogdet`, QR compiles under XLA).

  Args:
    kernel: float tensor `[C, C]`, the matrix `W` of the data-to-latent direction.
    event_ndims: 1 for vectors, 3 for images.
  """

  def __init__(self, kernel, *, event_ndims=3, validate_args=False, name="invertible_1x1_conv"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([kernel], dtype_hint=tf.float32)
      self._kernel = tensor_util.convert_nonref_to_tensor(kernel, dtype=dtype, name="kernel")
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "Invertible1x1Conv")
      super().__init__(
          forward_min_event_ndims=event_ndims,
          is_constant_jacobian=True,
          validate_args=validate_args,
          dtype=dtype,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict(kernel=parameter_properties.ParameterProperties(event_ndims=2))

  @property
  def kernel(self):
    return self._kernel

  def _forward(self, x):
    return _shapes.channel_matmul(x, tf.linalg.inv(tf.convert_to_tensor(self._kernel)))

  def _inverse(self, y):
    return _shapes.channel_matmul(y, tf.convert_to_tensor(self._kernel))

  def _inverse_log_det_jacobian(self, y):
    _, r = tf.linalg.qr(tf.convert_to_tensor(self._kernel))
    log_abs_det = tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))))
    return _shapes.event_size_but_last(y, self._event_ndims) * log_abs_det


def lu_weight(permutation, lower_upper, log_scale, sign):
  r"""`W = P L (U + diag(sign * exp(log_scale)))` from Glow's LU parameterisation.

  `L` is unit lower-triangular (the strict lower part of `lower_upper`), `U` strictly upper
  triangular (its strict upper part) plus the diagonal, and `P = eye[permutation]`, the
  fixed permutation matrix whose row `i` is the unit vector `e_{permutation[i]}`, so that
  `P M = gather(M, permutation)`. Returns `(W, L, U + diag)`.
  """
  lower = tf.linalg.band_part(lower_upper, -1, 0) - tf.linalg.band_part(lower_upper, 0, 0)
  lower += tf.eye(tf.shape(lower_upper)[-1], dtype=lower_upper.dtype)
  upper = tf.linalg.band_part(lower_upper, 0, -1) - tf.linalg.band_part(lower_upper, 0, 0)
  upper += tf.linalg.diag(sign * tf.exp(log_scale))
  return tf.gather(tf.matmul(lower, upper), permutation), lower, upper


class LUInvertible1x1Conv(tfb.Bijector):
  r"""Invertible 1x1 convolution in Glow's LU parameterisation (Glow, section 3.2).

  .. math::
      W = P\,L\,\big(U + \operatorname{diag}(\operatorname{sign}(s) e^{\log|s|})\big),\qquad
      z_p = W y_p \;\text{(inverse)},\qquad
      \log|\det J_{f^{-1}}| = P_{\text{pos}} \sum_c \log|s_c|

  `P` is fixed, `L` unit lower triangular, `U` strictly upper triangular, `sign(s)` fixed;
  only `L`, `U` and `log|s|` train. The log-determinant is a sum (O(C)) instead of a
  `slogdet` (O(C^3)), and `W` can never become singular. Unlike `tfb.Glow`'s LU, the
  diagonal is `sign * exp(log_scale)`, so its magnitude stays positive.

  Args:
    permutation: int tensor `[C]`; `P = eye[permutation]`, i.e. `(P v)_i = v_{permutation[i]}`.
    lower_upper: float tensor `[C, C]`; strict lower part is `L`, strict upper part is `U`
      (the diagonal is ignored).
    log_scale: float tensor `[C]`, `log|s|`.
    sign: float tensor `[C]` of +-1, `sign(s)`.
    event_ndims: 1 for vectors, 3 for images.
  """

  def __init__(self, permutation, lower_upper, log_scale, sign, *, event_ndims=3,
               validate_args=False, name="lu_invertible_1x1_conv"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([lower_upper, log_scale, sign], dtype_hint=tf.float32)
      self._permutation = tensor_util.convert_nonref_to_tensor(
          permutation, dtype_hint=tf.int32, name="permutation")
      self._lower_upper = tensor_util.convert_nonref_to_tensor(
          lower_upper, dtype=dtype, name="lower_upper")
      self._log_scale = tensor_util.convert_nonref_to_tensor(
          log_scale, dtype=dtype, name="log_scale")
      self._sign = tensor_util.convert_nonref_to_tensor(sign, dtype=dtype, name="sign")
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "LUInvertible1x1Conv")
      super().__init__(
          forward_min_event_ndims=event_ndims,
          is_constant_jacobian=True,
          validate_args=validate_args,
          dtype=dtype,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict(
        permutation=parameter_properties.ParameterProperties(
            event_ndims=1, is_preferred=False),
        lower_upper=parameter_properties.ParameterProperties(event_ndims=2),
        log_scale=parameter_properties.ParameterProperties(event_ndims=1),
        sign=parameter_properties.ParameterProperties(event_ndims=1, is_preferred=False))

  def weight(self):
    """The matrix `W` (data-to-latent direction)."""
    w, _, _ = lu_weight(self._permutation, tf.convert_to_tensor(self._lower_upper),
                        tf.convert_to_tensor(self._log_scale), tf.convert_to_tensor(self._sign))
    return w

  def _inverse(self, y):
    return _shapes.channel_matmul(y, self.weight())

  def _forward(self, x):
    # W^{-1} = U^{-1} L^{-1} P^T by two triangular solves against P^T.
    _, lower, upper = lu_weight(self._permutation, tf.convert_to_tensor(self._lower_upper),
                                tf.convert_to_tensor(self._log_scale),
                                tf.convert_to_tensor(self._sign))
    p_t = tf.transpose(tf.gather(tf.eye(tf.shape(lower)[-1], dtype=lower.dtype),
                                 self._permutation))
    w_inv = tf.linalg.triangular_solve(
        upper, tf.linalg.triangular_solve(lower, p_t, lower=True), lower=False)
    return _shapes.channel_matmul(x, w_inv)

  def _inverse_log_det_jacobian(self, y):
    return (_shapes.event_size_but_last(y, self._event_ndims)
            * tf.reduce_sum(tf.convert_to_tensor(self._log_scale)))
