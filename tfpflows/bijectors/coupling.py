"""Additive (NICE) and affine (RealNVP / Glow) coupling as a TFP bijector."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.bijectors import _shapes

tfb = tfp.bijectors

__all__ = ["Coupling", "MASKS", "SCALES", "SHIFTS", "TRANSFORMS"]

MASKS = ("channel", "checkerboard")
TRANSFORMS = ("affine", "additive")
SCALES = ("sigmoid", "exp")
SHIFTS = ("data", "latent")


def check_scale(scale, transform, owner):
  """One-line ValueError unless `scale` is in `SCALES` and fits `transform`."""
  if scale not in SCALES:
    raise ValueError(f"{owner}: scale must be one of {SCALES}, got {scale!r}")
  if scale != "sigmoid" and transform != "affine":
    raise ValueError(f"{owner}: scale={scale!r} applies to transform='affine'; got "
                     f"transform={transform!r}")


def check_shift(shift, owner):
  """One-line ValueError unless `shift` is in `SHIFTS`."""
  if shift not in SHIFTS:
    raise ValueError(f"{owner}: shift must be one of {SHIFTS}, got {shift!r}")


class Coupling(tfb.Bijector):
  r"""Coupling layer: half of the event conditions an elementwise map of the other half.

  With a binary mask splitting the data `y` into a conditioning part `y_a` and a
  transformed part `y_b`, and `NN` the injected conditioner:

  .. math::
      \text{inverse (data to latent):}\quad
      z_a = y_a,\qquad z_b = (y_b + t) \odot \sigma(h + 2),\qquad (t, h) = NN(y_a)

      \text{forward:}\quad y_b = z_b / \sigma(h + 2) - t,\qquad
      \log|\det J_{f^{-1}}| = \sum_b \log \sigma(h_b + 2)

  for `transform="affine"` with `scale="sigmoid"` (Glow's stable scale, sigma the logistic
  sigmoid, so the data-to-latent direction never expands volume), and `z_b = y_b + t`,
  log-det 0, for `transform="additive"` (NICE).

  `scale="exp"` replaces the log-scale `log sigma(h + 2)` by the soft-clamped

  .. math::
      \log s = c \tanh(h / c),\qquad z_b = (y_b + t) \odot s,\qquad c = `clamp`,

  which contracts and expands alike (by up to `e^c` per coupling) and is the identity at
  `h = 0`: RealNVP's exponential scale (Dinh et al. 2017) with the clamp of Ardizzone et
  al. (2019) in place of its `tanh` times a learned scale. Use it where the sampling side
  must contract, as in variational inference (`tfpflows.vi.build_surrogate` picks it);
  Glow's sigmoid is the default, for density estimation.

  `shift="latent"` adds the shift after the scale, RealNVP's own order (its eq. 7):

  .. math::
      z_b = y_b \odot s + t,\qquad y_b = (z_b - t) / s,

  so that on the sampling side the shift is in latent units, multiplied by the local
  scale, as in an inverse autoregressive flow; the log-det is the same. The default
  `shift="data"` is Glow's order, `z_b = (y_b + t) \odot s`, whose shift is in data
  units: where the target is narrow (a funnel's neck, width `e^{-4.5}` on Neal's) an
  Adam-sized jitter of `t` moves the mass by a whole width, and a variational fit at a
  constant learning rate spikes (`tfpflows.vi.build_surrogate` picks `"latent"`).

  Masks:
    * `"channel"`: `y_a` is the first `C // 2` entries of the last axis (the last
      `C - C // 2` with `reverse=True`). The conditioner sees only `y_a`:
      `conditioner(y_a) -> [..., k * C_b]`, `k = 2` (affine: `t` then `h`) or 1 (additive).
    * `"checkerboard"`: a parity mask over positions (images: `(i + j) % 2` over H and W,
      all channels alike; vectors: index parity), flipped by `reverse=True`. The conditioner
      sees the masked input `m * y` and returns `[..., k * C]` for the whole event; only the
      `1 - m` part is transformed.

  The conditioner may compute in another precision (e.g. a Keras `mixed_bfloat16` policy);
  its output is cast back to the data's dtype before the transform and the log-det.

  The conditioner is called once per `forward` or `inverse`: its log-determinant is stored
  in TFP's bijector cache beside the result, so `log_prob` does not run it a second time.
  For images the conditioner receives rank-4 tensors `[N, H, W, C_in]`; for vectors rank 2.
  Zero-initialise its last layer so that a new coupling is the identity.

  Args:
    conditioner: callable (a function, `tf.Module` or Keras layer) as above.
    mask: `"channel"` or `"checkerboard"`.
    transform: `"affine"` or `"additive"`.
    scale: the affine scale, `"sigmoid"` (default) or `"exp"`, as above; affine only.
    clamp: `c > 0` of `scale="exp"` (default 10: at most `e^10` either way per coupling).
    shift: where an affine coupling's shift acts, `"data"` (default, Glow's order) or
      `"latent"` (RealNVP's order), as above; no effect on the additive transform.
    reverse: swap the roles of the two halves.
    event_ndims: 1 for vectors `[D]`, 3 for images `[H, W, C]`.

  References:
    Dinh, Krueger & Bengio, "NICE", 2014. Dinh, Sohl-Dickstein & Bengio, "Density
    estimation using Real NVP", ICLR 2017. Kingma & Dhariwal, "Glow", NeurIPS 2018.
  """

  def __init__(self, conditioner, *, mask="channel", transform="affine", reverse=False,
               event_ndims=3, scale="sigmoid", clamp=10., shift="data",
               validate_args=False, name="coupling"):
    parameters = dict(locals())
    if mask not in MASKS:
      raise ValueError(f"Coupling: mask must be one of {MASKS}, got {mask!r}")
    if transform not in TRANSFORMS:
      raise ValueError(f"Coupling: transform must be one of {TRANSFORMS}, got {transform!r}")
    if not callable(conditioner):
      raise TypeError(f"Coupling: conditioner must be callable, got {type(conditioner).__name__}")
    check_scale(scale, transform, "Coupling")
    check_shift(shift, "Coupling")
    try:
      clamp = float(clamp)
    except (TypeError, ValueError):
      clamp = float("nan")
    if not clamp > 0 or clamp == float("inf"):
      raise ValueError(f"Coupling: clamp must be a finite number > 0, got "
                       f"{parameters['clamp']!r}")
    with tf.name_scope(name) as name:
      self._conditioner = conditioner
      self._mask = mask
      self._transform = transform
      self._reverse = bool(reverse)
      self._scale, self._clamp = scale, clamp
      self._shift_latent = shift == "latent"
      self._event_ndims = _shapes.validate_event_ndims(event_ndims, "Coupling")
      super().__init__(
          forward_min_event_ndims=event_ndims,
          is_constant_jacobian=(transform == "additive"),
          validate_args=validate_args,
          parameters=parameters,
          name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def conditioner(self):
    return self._conditioner

  # -- masks ---------------------------------------------------------------------------

  def _split(self, x):
    """(conditioning part, transformed part), by one `tf.split` (cheap gradient)."""
    c = x.shape[-1]
    if c is None:
      raise ValueError("Coupling: the channel (last) dimension must be known statically")
    if c < 2:
      raise ValueError(f"Coupling: need at least 2 channels to split, got {c}")
    n_a = c // 2 if not self._reverse else c - c // 2
    if not self._reverse:
      x_a, x_b = tf.split(x, [n_a, c - n_a], axis=-1)
      return x_a, x_b
    x_b, x_a = tf.split(x, [c - n_a, n_a], axis=-1)
    return x_a, x_b

  def _merge(self, x_a, x_b):
    if not self._reverse:
      return tf.concat([x_a, x_b], axis=-1)
    return tf.concat([x_b, x_a], axis=-1)

  def _checkerboard(self, x):
    """Mask m (1 = conditioning) broadcastable to x's event."""
    if self._event_ndims == 3:
      h, w = tf.shape(x)[-3], tf.shape(x)[-2]
      parity = (tf.range(h)[:, None] + tf.range(w)[None, :]) % 2
      parity = parity[..., None]
    else:
      parity = tf.range(tf.shape(x)[-1]) % 2
    target = 1 if self._reverse else 0
    return tf.cast(tf.equal(parity, target), x.dtype)

  # -- conditioner ---------------------------------------------------------------------

  def _params(self, x_cond):
    """Runs the conditioner on [*batch, *event_cond]; returns (shift, log_scale or None)."""
    # The conditioner may compute in another dtype (a Keras mixed-precision policy): the
    # flow's own arithmetic stays in the input's dtype.
    out = _shapes.call_on_events(self._conditioner, x_cond, self._event_ndims)
    if self._transform == "additive":
      return out, None
    shift, raw = tf.split(out, 2, axis=-1)
    if self._scale == "exp":
      return shift, self._clamp * tf.tanh(raw / self._clamp)
    return shift, tf.math.log_sigmoid(raw + 2.)

  def _elementwise(self, v, cond, direction):
    """Elementwise transform of `v` given the conditioner input; returns (out, log-scale).

    The log-scale is None for the additive transform.
    """
    shift, log_scale = self._params(cond)
    if log_scale is None:
      out = v + shift if direction == "inverse" else v - shift
    elif self._shift_latent:   # z = y * s + t
      out = (v * tf.exp(log_scale) + shift if direction == "inverse"
             else (v - shift) * tf.exp(-log_scale))
    else:                      # z = (y + t) * s
      out = ((v + shift) * tf.exp(log_scale) if direction == "inverse"
             else v * tf.exp(-log_scale) - shift)
    return out, log_scale

  def _apply(self, v, direction):
    if self._mask == "channel":
      v_a, v_b = self._split(v)
      out_b, log_scale = self._elementwise(v_b, v_a, direction)
      out = self._merge(v_a, out_b)
      ildj = (tf.zeros([], v.dtype) if log_scale is None
              else _shapes.sum_event(log_scale, self._event_ndims))
    else:
      m = self._checkerboard(v)
      out_all, log_scale = self._elementwise(v, v * m, direction)
      out = m * v + (1. - m) * out_all
      ildj = (tf.zeros([], v.dtype) if log_scale is None
              else _shapes.sum_event((1. - m) * log_scale, self._event_ndims))
    return out, ildj

  # -- TFP hooks -----------------------------------------------------------------------

  def _forward(self, x):
    y, ildj = self._apply(x, "forward")
    self._cache.forward_attributes(x)["ildj"] = ildj
    return y

  def _inverse(self, y):
    x, ildj = self._apply(y, "inverse")
    self._cache.inverse_attributes(y)["ildj"] = ildj
    return x

  def _inverse_log_det_jacobian(self, y):
    return self._apply(y, "inverse")[1]
