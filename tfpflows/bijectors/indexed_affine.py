"""The index-conditioned affine map of continuously indexed flows (CIF) as a TFP bijector."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["IndexedAffine"]


class IndexedAffine(tfb.Bijector):
  r"""An elementwise affine map whose shift and scale are functions of an index `u`.

  With `(s, t) = NN(u)` the injected network:

  .. math::
      \text{inverse (data to latent):}\quad z = (h + t(u)) \odot e^{s(u)},\qquad
      \log|\det \partial z / \partial h| = \sum s(u)

      \text{forward:}\quad h = z \odot e^{-s(u)} - t(u)

  This is the index-dependent part of one CIF layer `F(.; u) = (affine(u))^{-1} o f^{-1}`
  on the data-to-latent side (Cornish et al. 2020, eq. 7, with the `G = exp` scaling of
  their reference code); `f` is any bijector, composed with this one by `tfb.Chain`. The
  index is a conditioning keyword argument, `u`, so a chain routes it by this bijector's
  name: `chain.inverse(x, **{affine.name: {"u": u}})`. For a given `u` the map and its
  log-det are exact; every call needs `u`.

  Shapes: `h` and `z` are `[*batch, D]` (`event_ndims=1`) or `[*batch, H, W, C]`
  (`event_ndims=3`); `u` is `[*batch, d_u]` or `[*batch, H, W, d_u]`, broadcast against
  nothing (same batch shape). The network maps `u` with its batch flattened (rank 2 or 4)
  to `[N, 2 D]` or `[N, H, W, 2 C]`: `s` then `t` along the last axis. Zero-initialise its
  last layer so that a new layer is the identity for every `u`.

  Args:
    shift_and_log_scale_fn: callable `u -> concat([s, t], -1)` (a function, `tf.Module` or
      Keras layer).
    event_ndims: 1 for vectors, 3 for images.

  References:
    Cornish, Caterini, Deligiannidis & Doucet, "Relaxing Bijectivity Constraints with
    Continuously Indexed Normalising Flows", ICML 2020.
  """

  def __init__(self, shift_and_log_scale_fn, *, event_ndims=1, validate_args=False,
               name="indexed_affine"):
    parameters = dict(locals())
    if not callable(shift_and_log_scale_fn):
      raise TypeError(f"IndexedAffine: shift_and_log_scale_fn must be callable, got "
                      f"{type(shift_and_log_scale_fn).__name__}")
    with tf.name_scope(name) as name:
      self._fn = shift_and_log_scale_fn
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "IndexedAffine")
      super().__init__(forward_min_event_ndims=event_ndims, validate_args=validate_args,
                       parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  def _log_scale_and_shift(self, u, like):
    if u is None:
      raise ValueError(f"{self.name}: the index u is required (pass u=... or route it by "
                       f"name through tfb.Chain)")
    u = tf.convert_to_tensor(u, like.dtype)
    out = _shapes.call_on_events(self._fn, u, self._event_ndims)
    c = like.shape[-1]
    if out.shape[-1] is not None and c is not None and out.shape[-1] != 2 * c:
      raise ValueError(f"{self.name}: shift_and_log_scale_fn must return 2 * {c} = {2 * c} "
                       f"values per position (s then t); got {out.shape[-1]}")
    s, t = tf.split(out, 2, axis=-1)
    return s, t

  def _forward(self, z, u=None):
    s, t = self._log_scale_and_shift(u, z)
    return z * tf.exp(-s) - t

  def _inverse(self, h, u=None):
    s, t = self._log_scale_and_shift(u, h)
    return (h + t) * tf.exp(s)

  def inverse_and_log_det(self, h, *, u):
    """`(inverse(h, u=u), inverse_log_det_jacobian(h, event_ndims, u=u))` from one call of
    the network (the two methods call it once each; CIF's inference pass needs both)."""
    h = tf.convert_to_tensor(h)
    s, t = self._log_scale_and_shift(u, h)
    return (h + t) * tf.exp(s), _shapes.sum_event(s, self._event_ndims)

  def _inverse_log_det_jacobian(self, h, u=None):
    s, _ = self._log_scale_and_shift(u, h)
    return _shapes.sum_event(s, self._event_ndims)

  def _forward_log_det_jacobian(self, z, u=None):
    s, _ = self._log_scale_and_shift(u, z)
    return -_shapes.sum_event(s, self._event_ndims)
