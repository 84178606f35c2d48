"""Keras layers that compose bijector layers: chain, squeeze, multi-scale factor-out."""

import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.layers import networks
from tfpflows.layers.base import BijectorLayer

tfb = tfp.bijectors


class ChainLayer(BijectorLayer):
  """A sequence of bijector layers, listed from the data side to the latent side.

  Builds `tfb.Chain([l.bijector() for l in layers])`: `Chain` applies its last element first
  in `forward`, so the inverse (data to latent) runs through `layers` in list order, which
  is also the order of data-dependent initialisation.
  """

  def __init__(self, layers, **kwargs):
    super().__init__(**kwargs)
    self.flow_layers = list(layers)

  def bijector(self, training=False):
    return tfb.Chain([layer.bijector(training=training) for layer in self.flow_layers],
                     name=self.name)

  def data_init(self, y):
    for layer in self.flow_layers:
      y = layer.data_init(y)
    return y

  def diagnose(self, y, report):
    for layer in self.flow_layers:
      y = layer.diagnose(y, report)
    return y


class SqueezeLayer(BijectorLayer):
  """Squeezes 2x2 blocks into channels on the way to the latent (`tfb.Invert(Squeeze())`).

  With `unsqueeze=True` it undoes a squeeze on the way to the latent (`Squeeze()` itself),
  which closes a multi-scale level so that the level preserves shapes.
  """

  def __init__(self, factor=2, *, unsqueeze=False, **kwargs):
    super().__init__(**kwargs)
    self.factor, self.unsqueeze = factor, bool(unsqueeze)

  def bijector(self, training=False):
    del training
    squeeze = bijectors.Squeeze(self.factor, name=self.name)
    return squeeze if self.unsqueeze else tfb.Invert(squeeze, name=self.name)


class FactorOutLayer(BijectorLayer):
  """Owns Glow's conditional prior network for a `bijectors.FactorOut` around `inner`.

  Args:
    inner: the `BijectorLayer` for the channels that continue (shape-preserving overall).
    channels: `C` at this level; the last `C - C // 2` channels are factored out.
    event_ndims: 1 for vectors, 3 for images.
    prior: optional Keras layer `y_h -> [..., 2 * C_z]`; default a zero-initialised conv
      3x3 (dense for vectors), so each factored-out prior starts as N(0, 1).
  """

  def __init__(self, inner, channels, *, event_ndims=3, prior=None, **kwargs):
    super().__init__(**kwargs)
    self.inner = inner
    self.event_ndims = event_ndims
    self.num_factored = int(channels) - int(channels) // 2
    if prior is None:
      prior = (networks.zero_conv(2 * self.num_factored) if event_ndims == 3
               else networks.zero_dense(2 * self.num_factored))
    self.prior = prior

  def bijector(self, training=False):
    return bijectors.FactorOut(self.inner.bijector(training=training), self.prior,
                               num_factored=self.num_factored, event_ndims=self.event_ndims,
                               name=self.name)

  def data_init(self, y):
    c = y.shape[-1]
    self.inner.data_init(y[..., :c - self.num_factored])
    return self.bijector().inverse(y)

  def diagnose(self, y, report):
    c = y.shape[-1]
    self.inner.diagnose(y[..., :c - self.num_factored], report)
    return self.bijector().inverse(y)


class LearnedTopLayer(BijectorLayer):
  r"""Glow's learned top prior (`learntop`): the top level's latent `h ~ N(m, diag(e^{2s}))`.

  Per-element `m` and `s` of the top level's shape, zero-initialised (the standard normal at
  first), as the bijector from the standard-normal base: `h = m + e^{s} z` on the way to
  the data, `z = (h - m) e^{-s}` on the way to the latent, `log|det dh/dz| = sum s`. It
  gives the flow per-pixel location and scale at once (normflows' `GlowBase` learns the
  same), which ActNorm's per-channel statistics cannot.

  Args:
    shape: the top level's event shape `[h, w, c]`.
  """

  def __init__(self, shape, **kwargs):
    super().__init__(**kwargs)
    self.shape = tuple(int(d) for d in shape)
    self.loc = self.add_weight(shape=self.shape, initializer="zeros", name="loc")
    self.log_scale = self.add_weight(shape=self.shape, initializer="zeros", name="log_scale")

  def bijector(self, training=False):
    del training
    return tfb.Chain([tfb.Shift(tf.convert_to_tensor(self.loc)),
                      tfb.Scale(log_scale=tf.convert_to_tensor(self.log_scale))],
                     name=self.name)

