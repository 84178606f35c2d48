"""The Keras-side base class: a layer that owns weights and builds a bijector from them."""

import keras
import tensorflow as tf

# Where a map that is explicit in one direction only sits (planar, radial, Sylvester,
# residual blocks): "density" puts the explicit map on the data-to-latent side (exact,
# cheap `log_prob`; sampling inverts it iteratively), "sample" on the latent-to-data side
# (exact, cheap `sample` and `experimental_sample_and_log_prob`, as in variational
# inference; `log_prob` of other points inverts it iteratively).
PLACEMENTS = ("density", "sample")


def tf_variable(variable):
  """The `tf.Variable` behind a Keras 3 variable (TensorFlow backend), or `variable` itself.

  TFP reads `tf.Variable`s at each use and tracks them as `tf.Module` attributes; Keras 3
  variables are neither, so TFP objects that must stay live are given these.
  """
  if isinstance(variable, tf.Variable):
    return variable
  value = getattr(variable, "_value", None)
  if not isinstance(value, tf.Variable):
    raise TypeError(f"expected a Keras variable of the TensorFlow backend, got "
                    f"{type(variable).__name__}")
  return value


def check_placement(placement, owner):
  if placement not in PLACEMENTS:
    raise ValueError(f"{owner}: placement must be one of {', '.join(map(repr, PLACEMENTS))}; "
                     f"got {placement!r}")
  return placement


class BijectorLayer(keras.layers.Layer):
  """A Keras 3 layer that owns a bijector's weights and networks.

  Keras 3 and TFP do not track each other's variables (see the notes on the stack), so
  the roles are split: the layer holds every weight and network, and `bijector()` builds
  a pure `tfb.Bijector` from their *current values* each time it is called (cheap: no
  weights are created). Inside `model.fit` the gradient flows from the bijector's outputs
  back to the layer's weights.

  Subclasses implement `bijector()`; layers with data-dependent initialisation override
  `data_init(y)`, which receives data-side inputs `y` and returns the latent-side result of
  `inverse` after initialising itself (the normalizing direction, as in Glow).
  """

  def bijector(self, training=False):
    """The pure bijector built from the current weights.

    `training=True` inside `fit`: layers whose bijector is stochastic or keeps running
    state (residual blocks: the log-det estimator, spectral-norm power iteration) pick
    their training setting; every other layer ignores it.
    """
    raise NotImplementedError

  def data_init(self, y):
    """Initialises from data-side inputs `y`; returns the latent-side output."""
    return self.bijector().inverse(y)

  def diagnose(self, y, report):
    """Adds health figures of stochastic or iterative layers to the dict `report`.

    Walks the data-to-latent direction like `data_init`; returns the latent-side output.
    Layers with nothing to report just map `y`.
    """
    del report
    return self.bijector().inverse(y)

  def call(self, y):
    """Maps data to latent (the inverse), so a layer can be used on its own."""
    return self.bijector().inverse(y)
