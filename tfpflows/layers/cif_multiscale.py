r"""The stages a `CIFModel` is made of: CIF layers, fixed maps, chains and a factor-out.

A CIF model for images is multi-scale, as Glow and Residual Flows are (Dinh et al. 2017,
3.6): squeeze `2x2` blocks into channels, run CIF layers at that scale, then factor out half
of the channels with a Gaussian prior conditioned on the rest, and go on with the other
half at the next scale. Each CIF layer keeps its own index `u_l`, one channel (`u_dim`) per
pixel *at its scale* (Cornish et al. 2020, appendix: "u is one channel per pixel at each
scale").

Every stage maps data to latent with the same interface, which `CIFModel` walks:

* `infer_stage(x, seeds=, us=, training=) -> (z, log_joint, log_q, drawn)`: `log_joint`
  the stage's part of `log p(x, u)` and `log_q` its part of `log q(u | x)`, both
  `[batch]`; `drawn` maps each CIF layer of the stage to its `u`. `seeds` (draws) or `us`
  (given indices) map the CIF layers to their seed or `u`.
* `generate_stage(z, seeds=, training=) -> x`: latent to data, `u ~ p(u | z)`.
* `diagnose_stage(x, report, seeds=) -> z` and `data_init_stage(x) -> z` (data-dependent
  initialisation, data side first).
* `indexed_layers()`: its CIF layers, data side first (the order of `us`).

`CIFLayer` itself is a stage. The factor-out writes the factored part standardised into the
latent (`e = (y_z - mu(y_h)) e^{-lambda(y_h)}`, as `bijectors.FactorOut`) and closes every
level with an unsqueeze, so the latent `encode` returns has the data's shape and its base is
`N(0, I)`: a temperature `T` on that base scales every level's prior, as in Glow.
"""

import keras
import tensorflow as tf

from tfpflows.layers import networks

__all__ = ["CIFChain", "CIFFactorOut", "FixedStage", "infer_stages", "generate_stages",
           "diagnose_stages", "data_init_stages"]


def _event_sum(v, event_ndims):
  return tf.reduce_sum(v, axis=list(range(-event_ndims, 0)))


# -- walking a list of stages (`CIFChain` and `CIFModel`) -------------------------------

def infer_stages(stages, x, *, seeds=None, us=None, training=False, log_joint=None):
  """`infer_stage` through `stages` in order; `log_joint` optionally starts the sum."""
  if log_joint is None:
    log_joint = tf.zeros(tf.shape(x)[:1], x.dtype)
  log_q = tf.zeros_like(log_joint)
  drawn = {}
  for stage in stages:
    x, lj, lq, d = stage.infer_stage(x, seeds=seeds, us=us, training=training)
    log_joint += lj
    log_q += lq
    drawn.update(d)
  return x, log_joint, log_q, drawn


def generate_stages(stages, z, *, seeds=None, training=False):
  for stage in reversed(stages):
    z = stage.generate_stage(z, seeds=seeds, training=training)
  return z


def diagnose_stages(stages, x, report, *, seeds=None):
  for stage in stages:
    x = stage.diagnose_stage(x, report, seeds=seeds)
  return x


def data_init_stages(stages, x):
  for stage in stages:
    x = stage.data_init_stage(x)
  return x


class FixedStage(keras.layers.Layer):
  """A plain bijector layer (`BijectorLayer`: a squeeze, an ActNorm) as a stage with no index.

  Its exact `log|det J_{f^{-1}}|` goes into `log p(x, u)`; it draws nothing.
  """

  def __init__(self, layer, *, event_ndims=3, **kwargs):
    super().__init__(**kwargs)
    self.layer = layer
    self.event_ndims = int(event_ndims)

  def indexed_layers(self):
    return []

  def build(self, input_shape=None):
    self.built = True

  def infer_stage(self, x, *, seeds=None, us=None, training=False):
    del seeds, us
    f = self.layer.bijector(training=training)
    z = f.inverse(x)
    log_det = f.inverse_log_det_jacobian(x, event_ndims=self.event_ndims)
    log_det = tf.broadcast_to(tf.cast(log_det, x.dtype), tf.shape(x)[:1])
    return z, log_det, tf.zeros_like(log_det), {}

  def generate_stage(self, z, *, seeds=None, training=False):
    del seeds
    return self.layer.bijector(training=training).forward(z)

  def diagnose_stage(self, x, report, *, seeds=None):
    del seeds
    return self.layer.diagnose(x, report)

  def data_init_stage(self, x):
    return self.layer.data_init(x)


class CIFChain(keras.layers.Layer):
  """Stages in sequence, data side first (`infer_stage` in list order, `generate_stage` in
  reverse)."""

  def __init__(self, stages, **kwargs):
    super().__init__(**kwargs)
    self.stages = list(stages)

  def indexed_layers(self):
    return [layer for stage in self.stages for layer in stage.indexed_layers()]

  def build(self, input_shape=None):
    for stage in self.stages:
      stage.build()
    self.built = True

  def infer_stage(self, x, *, seeds=None, us=None, training=False):
    return infer_stages(self.stages, x, seeds=seeds, us=us, training=training)

  def generate_stage(self, z, *, seeds=None, training=False):
    return generate_stages(self.stages, z, seeds=seeds, training=training)

  def diagnose_stage(self, x, report, *, seeds=None):
    return diagnose_stages(self.stages, x, report, seeds=seeds)

  def data_init_stage(self, x):
    return data_init_stages(self.stages, x)


class CIFFactorOut(keras.layers.Layer):
  r"""Factors out the last `C - C // 2` channels, `inner` stages on the rest.

  Data to latent, for `y = [y_h, y_z]` split on the channel axis:

  .. math::
      (\mu, \lambda) = \text{prior}(y_h), \qquad e_z = (y_z - \mu) e^{-\lambda}, \qquad
      z = [\,\text{inner}(y_h),\ e_z\,],

  adding `-sum lambda` to `log p(x, u)`, so that with the `N(0, I)` base `e_z`'s part is the
  log-density of `y_z` under `N(mu(y_h), e^{2 lambda(y_h)})` (Dinh et al. 2017, 3.6; Glow's
  `split2d`). The prior sees `y_h`, the data-side input of `inner`, so generation runs
  `inner` first and then draws `y_z` given its output.

  Args:
    inner: a stage (`CIFChain`) on `[H, W, C // 2]` that keeps shapes.
    channels: `C`, the channels of this stage's input.
    prior: optional Keras layer `y_h -> [..., 2 (C - C // 2)]`; default a zero-initialised
      3x3 convolution (each factored prior starts as `N(0, 1)`).
  """

  def __init__(self, inner, channels, *, prior=None, **kwargs):
    super().__init__(**kwargs)
    self.inner = inner
    self.channels = int(channels)
    self.num_factored = self.channels - self.channels // 2
    if self.channels < 2:
      raise ValueError(f"CIFFactorOut: channels must be at least 2; got {channels!r}")
    self.prior = networks.zero_conv(2 * self.num_factored) if prior is None else prior

  def indexed_layers(self):
    return self.inner.indexed_layers()

  def build(self, input_shape=None):
    self.inner.build()
    self.built = True

  def _split(self, v):
    return tf.split(v, [self.channels - self.num_factored, self.num_factored], axis=-1)

  def _prior(self, y_h):
    mean, log_scale = tf.split(tf.cast(self.prior(y_h), y_h.dtype), 2, axis=-1)
    return mean, log_scale

  def _standardise(self, y):
    y_h, y_z = self._split(y)
    mean, log_scale = self._prior(y_h)
    return y_h, (y_z - mean) * tf.exp(-log_scale), -_event_sum(log_scale, 3)

  def infer_stage(self, x, *, seeds=None, us=None, training=False):
    y_h, e_z, log_det = self._standardise(x)
    z_h, log_joint, log_q, drawn = self.inner.infer_stage(y_h, seeds=seeds, us=us,
                                                          training=training)
    return tf.concat([z_h, e_z], -1), log_joint + log_det, log_q, drawn

  def generate_stage(self, z, *, seeds=None, training=False):
    z_h, e_z = self._split(z)
    y_h = self.inner.generate_stage(z_h, seeds=seeds, training=training)
    mean, log_scale = self._prior(y_h)
    return tf.concat([y_h, mean + tf.exp(log_scale) * e_z], -1)

  def diagnose_stage(self, x, report, *, seeds=None):
    y_h, e_z, _ = self._standardise(x)
    return tf.concat([self.inner.diagnose_stage(y_h, report, seeds=seeds), e_z], -1)

  def data_init_stage(self, x):
    y_h, e_z, _ = self._standardise(x)
    return tf.concat([self.inner.data_init_stage(y_h), e_z], -1)
