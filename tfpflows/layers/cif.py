"""Keras layer of one continuously indexed flow (CIF) layer: base map, s/t, p(u|z), q(u|h)."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.layers import seeds

tfb, tfd = tfp.bijectors, tfp.distributions

__all__ = ["CIFLayer", "gaussian_net"]


# Standard deviation of the last layer's initial kernel for a fan-in of 10 (the 2D nets'),
# `sqrt(LAST_LAYER_SCALE / fan_in)` in general (so a 3x3 convolution of 32 channels starts
# with outputs of the same size). Not zero: with zero last layers the index networks start
# at a saddle (their hidden layers get no gradient, and `u` carries no information), and
# on two separated squares a 4-layer CIF-RealNVP stayed at the Gaussian fit (NLL 2.0) for
# 2,400 steps; with 0.3 it reached 1.0 in 1,200. A fixed 0.3 behind a 3x3 convolution of
# 32 channels (fan-in 288) gave log-scales of about 5 and initial ELBOs of -1e6 on 8x8
# images.
LAST_LAYER_STDDEV = 0.3
LAST_LAYER_SCALE = 10 * LAST_LAYER_STDDEV ** 2


def gaussian_net(hidden, out_dim, *, event_ndims=1, activation="tanh", name=None):
  """A small network `input -> out_dim` values per position; last layer's kernel
  `N(0, LAST_LAYER_SCALE / fan_in)` (`LAST_LAYER_STDDEV` for a fan-in of 10), bias zero.

  Vectors: `len(hidden)` Dense layers then a linear Dense. Images: 3x3 convolutions of the
  `hidden` widths then a linear 3x3 convolution (per-pixel outputs).
  """
  last = keras.initializers.VarianceScaling(LAST_LAYER_SCALE, mode="fan_in",
                                            distribution="untruncated_normal")
  if event_ndims == 1:
    layers = [keras.layers.Dense(h, activation=activation) for h in hidden]
    layers.append(keras.layers.Dense(out_dim, kernel_initializer=last,
                                     bias_initializer="zeros"))
  else:
    layers = [keras.layers.Conv2D(h, 3, padding="same", activation=activation) for h in hidden]
    layers.append(keras.layers.Conv2D(out_dim, 3, padding="same", kernel_initializer=last,
                                      bias_initializer="zeros"))
  return keras.Sequential(layers, name=name)


class CIFLayer(keras.layers.Layer):
  r"""One CIF layer around a base bijector layer `f`, with its own index `u`.

  Data to latent (inference): `h = f^{-1}(x)`, `u ~ q(u | h)`, `z = (h + t(u)) e^{s(u)}`;
  latent to data (generation): `u ~ p(u | z)`, `x = f(z e^{-s(u)} - t(u))`. One draw
  contributes

  .. math::
      \log|\det J_{f^{-1}}(x)| + \textstyle\sum s(u) + \log p(u \mid z) - \log q(u \mid h)

  to the log-weight of the model's importance sampler (Cornish et al. 2020, section 4).
  `p` and `q` are diagonal Gaussians whose mean and log standard deviation come from the
  networks `p_net(z)` and `q_net(h)`; `(s, t) = st_net(u)` (`bijectors.IndexedAffine`). The
  three networks' last layers start small and random (`LAST_LAYER_STDDEV`), not zero: zero
  last layers are a saddle of the ELBO (see `gaussian_net`).

  Args:
    base: a `BijectorLayer` (`f`), e.g. a residual block or a coupling layer; its weights
      are this layer's.
    event_shape: `[D]` or `[H, W, C]`.
    u_dim: dimension of `u` (per pixel for images).
    hidden: widths of the hidden layers of the three networks.
    seed: seed of the layer's stream of `u` draws (training and evaluation streams).
  """

  def __init__(self, base, event_shape, *, u_dim=1, hidden=(10, 10), seed=None, **kwargs):
    super().__init__(**kwargs)
    if not callable(getattr(base, "bijector", None)) or not callable(
        getattr(base, "data_init", None)):
      raise ValueError(f"CIFLayer: base must be a BijectorLayer (a layer whose bijector() "
                       f"builds the map f from its weights); got {type(base).__name__}")
    self.base = base
    self.event_shape = tuple(int(d) for d in event_shape)
    self.event_ndims = len(self.event_shape)
    if self.event_ndims not in (1, 3):
      raise ValueError(f"CIFLayer: event_shape must be [D] or [H, W, C]; got "
                       f"{list(event_shape)}")
    if isinstance(u_dim, bool) or not isinstance(u_dim, int) or u_dim < 1:
      raise ValueError(f"CIFLayer: u_dim must be a positive integer; got {u_dim!r}")
    self.u_dim = u_dim
    self.hidden = tuple(int(h) for h in hidden)
    channels = self.event_shape[-1]
    nd = self.event_ndims
    self.st_net = gaussian_net(self.hidden, 2 * channels, event_ndims=nd, name="st_net")
    self.p_net = gaussian_net(self.hidden, 2 * u_dim, event_ndims=nd, name="p_net")
    self.q_net = gaussian_net(self.hidden, 2 * u_dim, event_ndims=nd, name="q_net")
    self.seed_generator = keras.random.SeedGenerator(seed, name="u_seed")
    self.eval_seed_generator = keras.random.SeedGenerator(
        None if seed is None else seed + 104729, name="eval_u_seed")

  @property
  def u_shape(self):
    return self.event_shape[:-1] + (self.u_dim,)

  def next_seed(self, training):
    generator = self.seed_generator if training else self.eval_seed_generator
    return seeds.next_seed(generator)

  def build(self, input_shape=None):
    del input_shape
    x = tf.zeros((1,) + self.event_shape)
    f = self.base.bijector()
    latent = tuple(f.inverse_event_shape(self.event_shape).as_list())
    if latent != self.event_shape:
      raise ValueError(f"CIFLayer {self.name}: the base flow cannot be indexed: it maps "
                       f"events of shape {list(self.event_shape)} to {list(latent)}, and the "
                       f"indexed affine map needs the same shape on both sides")
    f.inverse(x)
    u = tf.zeros((1,) + self.u_shape)
    self.st_net(u), self.p_net(x), self.q_net(x)
    self.built = True

  # -- TFP objects from the current weights --------------------------------------------

  def affine(self):
    """`bijectors.IndexedAffine` of `st_net`, named `"<layer>_affine"` for `tfb.Chain`."""
    return bijectors.IndexedAffine(self.st_net, event_ndims=self.event_ndims,
                                   name=f"{self.name}_affine")

  def bijector(self, training=False):
    """`F(.; u) = f o affine(u)` (latent -> data), `u` routed by the affine's name."""
    return tfb.Chain([self.base.bijector(training=training), self.affine()],
                     name=f"{self.name}_indexed")

  def _gaussian(self, net, v):
    out = tf.cast(net(v), v.dtype)
    mean, log_std = tf.split(out, 2, axis=-1)
    return tfd.Independent(tfd.Normal(mean, tf.exp(log_std)),
                           reinterpreted_batch_ndims=self.event_ndims)

  def p_u(self, z):
    """`p(u | z)`, a distribution over `[*u_shape]` per row of `z`."""
    return self._gaussian(self.p_net, z)

  def q_u(self, h):
    """`q(u | h)`, a distribution over `[*u_shape]` per row of `h`."""
    return self._gaussian(self.q_net, h)

  # -- the two directions ----------------------------------------------------------------

  def infer(self, x, *, seed, training=False, u=None):
    """Data to latent for a batch `x`: draws `u ~ q(u | h)` (or takes the given `u`).

    Returns `(z, u, log_joint, log_q)`, both `[batch]`: `log_joint` the layer's part of
    `log p(x, u)`, `log|det J_{f^{-1}}(x)| + sum s(u) + log p(u | z)`, and `log_q` is
    `log q(u | h)`.
    """
    f = self.base.bijector(training=training)
    h = f.inverse(x)
    log_joint = f.inverse_log_det_jacobian(x, event_ndims=self.event_ndims)
    q = self.q_u(h)
    if u is None:
      u = q.sample(seed=seed)
    z, log_det = self.affine().inverse_and_log_det(h, u=u)
    log_joint += log_det
    log_joint += self.p_u(z).log_prob(u)
    return z, u, log_joint, q.log_prob(u)

  def diagnose(self, x, report, *, seed):
    """Adds this layer's health figures to `report` (its base's too: residual blocks' via
    `diagnose`) for one draw `u ~ q(u | h)`; returns the latent-side `z`.

    `report[name]["u_gap"]`: the batch mean of `log q(u | h) - log p(u | z)`.
    """
    h = self.base.diagnose(x, report)
    q = self.q_u(h)
    u = q.sample(seed=seed)
    z = self.affine().inverse(h, u=u)
    gap = q.log_prob(u) - self.p_u(z).log_prob(u)
    report.setdefault(self.name, {})["u_gap"] = tf.reduce_mean(gap)
    return z

  def generate(self, z, *, seed, training=False):
    """Latent to data for a batch `z`: draws `u ~ p(u | z)`; returns `(x, u)`."""
    u = self.p_u(z).sample(seed=seed)
    h = self.affine().forward(z, u=u)
    return self.base.bijector(training=training).forward(h), u

  # -- the stage interface of `CIFModel` (`layers.cif_multiscale`) -----------------------

  def indexed_layers(self):
    return [self]

  def infer_stage(self, x, *, seeds=None, us=None, training=False):
    z, u, log_joint, log_q = self.infer(x, seed=None if seeds is None else seeds[self],
                                        training=training, u=None if us is None else us[self])
    return z, log_joint, log_q, {self: u}

  def generate_stage(self, z, *, seeds=None, training=False):
    return self.generate(z, seed=seeds[self], training=training)[0]

  def diagnose_stage(self, x, report, *, seeds=None):
    return self.diagnose(x, report, seed=seeds[self])

  def data_init_stage(self, x):
    """Initialises the base map; the indexed affine starts near the identity, so its input
    `h` stands in for the next stage's."""
    return self.base.data_init(x)

  def call(self, x):
    return self.infer(x, seed=self.next_seed(False))[0]
