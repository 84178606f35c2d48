"""Squeeze: space-to-depth reshaping of images (RealNVP, Glow)."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import prefer_static as ps

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["Squeeze"]


class Squeeze(tfb.Bijector):
  r"""Space-to-depth by a factor `f`: `[..., H, W, C] -> [..., H/f, W/f, f*f*C]`.

  .. math::
      y[i, j, (a f + b) C + c] = x[f i + a, f j + b, c], \qquad \log|\det J| = 0

  A permutation of the entries, so volume-preserving. `forward` squeezes, `inverse`
  unsqueezes (`tf.nn.space_to_depth` / `depth_to_space` on any batch shape). In a
  generative chain (latent to data), the data-side squeeze is `tfb.Invert(Squeeze())`.

  Args:
    factor: int `f >= 2`; H and W must be divisible by it.

  References:
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, 3.6.
  """

  def __init__(self, factor=2, *, validate_args=False, name="squeeze"):
    parameters = dict(locals())
    if int(factor) != factor or factor < 2:
      raise ValueError(f"Squeeze: factor must be an integer >= 2, got {factor!r}")
    with tf.name_scope(name) as name:
      self._factor = int(factor)
      super().__init__(
          forward_min_event_ndims=3,
          is_constant_jacobian=True,
          validate_args=validate_args,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def factor(self):
    return self._factor

  def _check_divisible(self, shape):
    f = self._factor
    h, w = shape[-3], shape[-2]
    for size, axis in ((h, "height"), (w, "width")):
      if size is not None and size % f:
        raise ValueError(f"Squeeze: image {axis} {size} is not divisible by the factor {f}")

  def _forward(self, x):
    self._check_divisible(x.shape)
    flat, batch_shape = _shapes.flatten_batch(x, 3)
    return _shapes.unflatten_batch(tf.nn.space_to_depth(flat, self._factor), batch_shape, 3)

  def _inverse(self, y):
    flat, batch_shape = _shapes.flatten_batch(y, 3)
    return _shapes.unflatten_batch(tf.nn.depth_to_space(flat, self._factor), batch_shape, 3)

  def _forward_log_det_jacobian(self, x):
    return tf.zeros([], dtype=x.dtype)

  def _forward_event_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank is None:
      return input_shape
    self._check_divisible(input_shape)
    h, w, c = input_shape[-3:]
    f = self._factor
    return input_shape[:-3].concatenate([
        None if h is None else h // f, None if w is None else w // f,
        None if c is None else c * f * f])

  def _inverse_event_shape(self, output_shape):
    output_shape = tf.TensorShape(output_shape)
    if output_shape.rank is None:
      return output_shape
    h, w, c = output_shape[-3:]
    f = self._factor
    if c is not None and c % (f * f):
      raise ValueError(f"Squeeze: {c} channels are not divisible by factor**2 = {f * f}")
    return output_shape[:-3].concatenate([
        None if h is None else h * f, None if w is None else w * f,
        None if c is None else c // (f * f)])

  def _forward_event_shape_tensor(self, input_shape):
    f = self._factor
    return ps.concat([input_shape[:-3], [input_shape[-3] // f, input_shape[-2] // f,
                                         input_shape[-1] * f * f]], axis=0)

  def _inverse_event_shape_tensor(self, output_shape):
    f = self._factor
    return ps.concat([output_shape[:-3], [output_shape[-3] * f, output_shape[-2] * f,
                                          output_shape[-1] // (f * f)]], axis=0)
