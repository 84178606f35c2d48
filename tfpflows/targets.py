r"""Unnormalised 2D targets with known normalisers, for variational inference.

Each `Target` is an unnormalised density :math:`\tilde p(x) = Z\,p(x)` whose normalised
`p` is known in closed form and can be sampled exactly, with :math:`\log Z` given, so that
a surrogate `q` fitted to :math:`\tilde p` has an exact gap
:math:`\mathrm{KL}(q\,\|\,p) = \log Z - \mathrm{ELBO}(q)` (`tfpflows.vi.elbo` estimates it
with a standard error).

* `banana`: :math:`x_1 \sim N(0, a^2)`, :math:`x_2 \mid x_1 \sim N(b(x_1^2 - a^2), 1)`, a
  volume-preserving shear of a Gaussian (Haario et al. 1999).
* `funnel`: Neal's funnel in 2D, :math:`v \sim N(0, \sigma^2)`,
  :math:`x \mid v \sim N(0, e^{v})`; coordinates `(v, x)` (Neal 2003).
* `gaussian_mixture`: `num_modes` equal-weight isotropic Gaussians on a circle, well
  separated: the multimodal target on which reverse-KL fits lose whole modes.
"""

import dataclasses
import math
from typing import Callable

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["Target", "banana", "funnel", "gaussian_mixture", "TARGETS"]

# log Z of every target: an arbitrary constant, so that targets are genuinely unnormalised.
LOG_Z = 1.5


@dataclasses.dataclass(frozen=True)
class Target:
  """An unnormalised density `exp(log_z) * p(x)` with `p` normalised and known.

  Attributes:
    name: a short name.
    distribution: `p`, a TFP distribution over `[dims]` events (exact `log_prob`, `sample`).
    log_z: `log Z` of the unnormalised density.
    bounds: `((x0, x1), (y0, y1))` for plots.
  """
  name: str
  distribution: tfd.Distribution
  log_z: float
  bounds: tuple

  @property
  def dims(self):
    return int(self.distribution.event_shape[0])

  def unnormalized_log_prob(self, x):
    """`log p~(x) = log p(x) + log Z`: the `target_log_prob_fn` of TFP's VI."""
    return self.distribution.log_prob(x) + self.log_z

  @property
  def log_prob_fn(self) -> Callable:
    return self.unnormalized_log_prob


class _Density2D(tfd.Distribution):
  """A scalar-batch distribution over `[2]` events; subclasses give `_log_prob`, `_sample_n`."""

  def __init__(self, parameters, name):
    super().__init__(dtype=tf.float32, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                     validate_args=False, allow_nan_stats=True, parameters=parameters,
                     name=name)

  @classmethod
  def _parameter_properties(cls, dtype, num_classes=None):
    return dict()

  def _event_shape(self):
    return tf.TensorShape([2])

  def _event_shape_tensor(self):
    return tf.constant([2], tf.int32)

  def _batch_shape(self):
    return tf.TensorShape([])

  def _batch_shape_tensor(self):
    return tf.constant([], tf.int32)


class _Banana(_Density2D):
  """`x1 ~ N(0, a^2)`, `x2 | x1 ~ N(b (x1^2 - a^2), 1)`."""

  def __init__(self, a=1.5, b=0.5, name="banana"):
    parameters = dict(locals())
    self._a, self._b = float(a), float(b)
    super().__init__(parameters, name)

  def _log_prob(self, x):
    x1, x2 = x[..., 0], x[..., 1]
    return (tfd.Normal(0., self._a).log_prob(x1)
            + tfd.Normal(0., 1.).log_prob(x2 - self._b * (tf.square(x1) - self._a ** 2)))

  def _sample_n(self, n, seed=None):
    z = tf.random.stateless_normal([n, 2], seed=tfp.random.sanitize_seed(seed))
    x1 = self._a * z[:, 0]
    return tf.stack([x1, z[:, 1] + self._b * (tf.square(x1) - self._a ** 2)], axis=-1)


class _Funnel(_Density2D):
  """Neal's funnel `v ~ N(0, sigma^2)`, `x | v ~ N(0, exp(v))`, events `(v, x)`."""

  def __init__(self, sigma=3., name="funnel"):
    parameters = dict(locals())
    self._sigma = float(sigma)
    super().__init__(parameters, name)

  def _log_prob(self, x):
    v, u = x[..., 0], x[..., 1]
    return tfd.Normal(0., self._sigma).log_prob(v) + tfd.Normal(0., tf.exp(v / 2.)).log_prob(u)

  def _sample_n(self, n, seed=None):
    z = tf.random.stateless_normal([n, 2], seed=tfp.random.sanitize_seed(seed))
    v = self._sigma * z[:, 0]
    return tf.stack([v, tf.exp(v / 2.) * z[:, 1]], axis=-1)


def banana(a=1.5, b=0.5, log_z=LOG_Z):
  """The banana target (see the module)."""
  return Target("banana", _Banana(a, b), float(log_z), ((-5., 5.), (-4., 6.)))


def funnel(sigma=3., log_z=LOG_Z):
  """Neal's funnel in 2D (see the module); the plot shows `v` in [-6, 4]."""
  return Target("funnel", _Funnel(sigma), float(log_z), ((-7., 5.), (-6., 6.)))


def gaussian_mixture(num_modes=4, radius=3., scale=0.5, log_z=LOG_Z):
  """`num_modes` equal-weight Gaussians `N(m_k, scale^2 I)`, `m_k` on a circle of `radius`."""
  angles = [2. * math.pi * k / num_modes + math.pi / 4. for k in range(num_modes)]
  means = [[radius * math.cos(t), radius * math.sin(t)] for t in angles]
  mixture = tfd.MixtureSameFamily(
      tfd.Categorical(logits=tf.zeros([num_modes])),
      tfd.MultivariateNormalDiag(tf.constant(means, tf.float32),
                                 tf.fill([num_modes, 2], float(scale))),
      name="gaussian_mixture")
  r = radius + 4. * scale
  return Target("mixture", mixture, float(log_z), ((-r, r), (-r, r)))


TARGETS = {"banana": banana, "funnel": funnel, "mixture": gaussian_mixture}
