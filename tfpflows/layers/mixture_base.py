"""A learnable Gaussian-mixture base distribution for vector flows (a Keras layer)."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.layers.base import tf_variable

tfd = tfp.distributions

__all__ = ["GaussianMixtureBase"]


class GaussianMixtureBase(keras.layers.Layer):
  r"""Owns a base :math:`\pi(z) = \sum_k w_k N(z; \mu_k, \mathrm{diag}(\sigma_k^2))` on `R^D`.

  With a unimodal base a flow must tear one Gaussian apart to represent separated modes,
  and a reverse-KL fit (variational inference) rarely does: it settles on one mode. A
  mixture base gives the flow `K` lumps to move, so the fit can keep several modes (the
  base of normflows' `GaussianMixture`; Papamakarios et al. 2021, section 3.4).

  Weights: `logits [K]` (`w = softmax`), `loc [K, D]`, `log_scale [K, D]`. Initialised with
  equal weights, means `~ N(0, I)` (seeded) and scales `init_scale`, so together the
  components cover the standard normal's bulk.

  `distribution(temperature, reparameterize)` is built from the variables themselves (TFP
  distributions read them at each use), so it is live like `FlowModel.distribution()`.
  Temperature `T` scales every component's standard deviation. With `reparameterize=True`
  (training: VI needs gradients through samples) samples carry implicit reparameterisation
  gradients (TFP's `MixtureSameFamily(reparameterize=True)`, `O(D)` extra work per sample).

  Args:
    dim: `D`.
    num_components: `K >= 2`.
    init_scale: initial standard deviation of every component.
    seed: seed of the initial means.
  """

  def __init__(self, dim, num_components, *, init_scale=0.5, seed=0, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.dim, self.num_components = int(dim), int(num_components)
    if self.num_components < 2 or self.dim < 1:
      raise ValueError(f"GaussianMixtureBase: need num_components >= 2 and dim >= 1; got "
                       f"{num_components} and {dim}")
    means = np.random.default_rng(seed).standard_normal((self.num_components, self.dim))
    const = keras.initializers.Constant
    self.logits = self.add_weight(shape=(self.num_components,), initializer="zeros",
                                  name="logits")
    self.loc = self.add_weight(shape=(self.num_components, self.dim),
                               initializer=const(means.astype("float32")), name="loc")
    self.log_scale = self.add_weight(
        shape=(self.num_components, self.dim),
        initializer=const(np.full((self.num_components, self.dim), np.log(init_scale),
                                  "float32")), name="log_scale")

  def distribution(self, temperature=1.0, reparameterize=False, stop_gradient=False):
    """The mixture over `[D]` events, reading the current weights at each use.

    `stop_gradient=True`: every weight read with its gradient stopped (still live).
    """
    t = tf.cast(temperature, tf.float32)
    if stop_gradient:
      scale_fn = lambda s: t * tf.exp(tf.stop_gradient(s))   # noqa: E731
    else:
      scale_fn = lambda s: t * tf.exp(s)   # noqa: E731
    scale = tfp.util.DeferredTensor(tf_variable(self.log_scale), scale_fn)
    loc, logits = tf_variable(self.loc), tf_variable(self.logits)
    if stop_gradient:
      loc = tfp.util.DeferredTensor(loc, tf.stop_gradient)
      logits = tfp.util.DeferredTensor(logits, tf.stop_gradient)
    components = tfd.Independent(tfd.Normal(loc, scale), reinterpreted_batch_ndims=1)
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 components, reparameterize=bool(reparameterize),
                                 name="mixture_base")

  def call(self, z):
    return self.distribution().log_prob(z)
