"""Activation normalisation (Glow's ActNorm) as a TFP bijector."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import tensor_util

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["ActNorm"]


class ActNorm(tfb.Bijector):
  r"""Per-channel affine map with log-parameterised scale (Kingma & Dhariwal, 2018).

  .. math::
      y = x \odot e^{s} + b, \qquad
      x = (y - b) \odot e^{-s}, \qquad
      \log|\det J_f| = P \sum_c s_c

  `b` (`loc`) and `s` (`log_scale`) have shape `[C]` and act on the last axis; `P` is the
  number of positions sharing a channel (`H * W` for images, 1 for vectors). The inverse
  is Glow's data-to-latent ActNorm with bias `-b` and scale `exp(-s)`; its data-dependent
  initialisation sets `b` to the per-channel mean and `s` to the log standard deviation of
  a batch, so the first latent activations have zero mean and unit variance. The
  initialisation is not done here (a bijector holds no state): see
  `tfpflows.layers.ActNormLayer`.

  Args:
    loc: float tensor `[C]`, the bias `b`.
    log_scale: float tensor `[C]`, the log scale `s`.
    event_ndims: 1 for vectors `[D]`, 3 for images `[H, W, C]`.

  References:
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
    NeurIPS 2018, section 3.1.
  """

  def __init__(self, loc, log_scale, *, event_ndims=1, validate_args=False, name="act_norm"):
    parameters = dict(locals())
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([loc, log_scale], dtype_hint=tf.float32)
      self._loc = tensor_util.convert_nonref_to_tensor(loc, dtype=dtype, name="loc")
      self._log_scale = tensor_util.convert_nonref_to_tensor(
          log_scale, dtype=dtype, name="log_scale")
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "ActNorm")
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
        loc=parameter_properties.ParameterProperties(event_ndims=1),
        log_scale=parameter_properties.ParameterProperties(event_ndims=1))

  @property
  def loc(self):
    return self._loc

  @property
  def log_scale(self):
    return self._log_scale

  def _forward(self, x):
    return x * tf.exp(self._log_scale) + self._loc

  def _inverse(self, y):
    return (y - self._loc) * tf.exp(-self._log_scale)

  def _forward_log_det_jacobian(self, x):
    return _shapes.event_size_but_last(x, self._event_ndims) * tf.reduce_sum(self._log_scale)
