"""Keras layers for Glow's channel mixing: invertible 1x1 convolution (plain, LU), permutations."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.layers.base import BijectorLayer

tfb = tfp.bijectors


def _random_rotation(channels, seed):
  """A random orthogonal matrix (QR of a Gaussian matrix, sign-corrected), as Glow initialises."""
  a = np.random.default_rng(seed).standard_normal((channels, channels))
  q, r = np.linalg.qr(a)
  return q * np.sign(np.diag(r))[None, :]


def _lu_decompose(a):
  """Partial-pivoting LU: returns (permutation, L, U) with `a = eye[permutation] @ L @ U`."""
  n = a.shape[0]
  u = a.astype(np.float64).copy()
  lower = np.eye(n)
  rows = np.arange(n)
  for k in range(n):
    p = k + int(np.argmax(np.abs(u[k:, k])))
    if p != k:
      u[[k, p]] = u[[p, k]]
      rows[[k, p]] = rows[[p, k]]
      lower[[k, p], :k] = lower[[p, k], :k]
    for i in range(k + 1, n):
      lower[i, k] = u[i, k] / u[k, k]
      u[i, k:] -= lower[i, k] * u[k, k:]
  # eye[rows] @ a = L U  =>  a = eye[rows]^T L U = eye[argsort(rows)] L U.
  return np.argsort(rows), lower, np.triu(u)


class Conv1x1Layer(BijectorLayer):
  """Owns an invertible 1x1 convolution, initialised to a random rotation (Glow).

  Args:
    channels: `C`.
    kind: `"lu"` (Glow's LU parameterisation: trains `L`, `U`, `log|s|`; `P` and `sign(s)`
      are fixed, non-trainable weights) or `"plain"` (trains `W`, log-det by slogdet).
    event_ndims: 1 for vectors, 3 for images.
    seed: seed of the initial rotation.
  """

  KINDS = ("lu", "plain")

  def __init__(self, channels, *, kind="lu", event_ndims=3, seed=0, **kwargs):
    super().__init__(**kwargs)
    if kind not in self.KINDS:
      raise ValueError(f"Conv1x1Layer: kind must be one of {self.KINDS}, got {kind!r}")
    self.channels, self.kind, self.event_ndims = int(channels), kind, event_ndims
    w = _random_rotation(self.channels, seed)
    const = keras.initializers.Constant
    if kind == "plain":
      self.kernel = self.add_weight(shape=(self.channels, self.channels),
                                    initializer=const(w.astype("float32")), name="kernel")
      return
    perm, lower, upper = _lu_decompose(w)
    diag = np.diag(upper)
    lower_upper = np.tril(lower, -1) + np.triu(upper, 1)
    self.permutation = self.add_weight(shape=(self.channels,), dtype="int32",
                                       initializer=const(perm.astype("int32")),
                                       trainable=False, name="permutation")
    self.sign = self.add_weight(shape=(self.channels,), initializer=const(np.sign(diag)),
                                trainable=False, name="sign")
    self.lower_upper = self.add_weight(shape=(self.channels, self.channels),
                                       initializer=const(lower_upper), name="lower_upper")
    self.log_scale = self.add_weight(shape=(self.channels,),
                                     initializer=const(np.log(np.abs(diag))), name="log_scale")

  def bijector(self, training=False):
    del training
    t = tf.convert_to_tensor
    if self.kind == "plain":
      return bijectors.Invertible1x1Conv(t(self.kernel), event_ndims=self.event_ndims,
                                         name=self.name)
    return bijectors.LUInvertible1x1Conv(t(self.permutation), t(self.lower_upper),
                                         t(self.log_scale), t(self.sign),
                                         event_ndims=self.event_ndims, name=self.name)


class PermuteLayer(BijectorLayer):
  """A fixed channel permutation, `"reverse"` or `"random"` (the baselines Glow compares to).

  Builds TFP's own `tfb.Permute` on the last axis; the permutation is a non-trainable weight
  so that it is saved with the model.
  """

  KINDS = ("reverse", "random")

  def __init__(self, channels, *, kind="reverse", seed=0, **kwargs):
    super().__init__(**kwargs)
    if kind not in self.KINDS:
      raise ValueError(f"PermuteLayer: kind must be one of {self.KINDS}, got {kind!r}")
    perm = (np.arange(channels)[::-1] if kind == "reverse"
            else np.random.default_rng(seed).permutation(channels))
    self.permutation = self.add_weight(
        shape=(channels,), dtype="int32", trainable=False, name="permutation",
        initializer=keras.initializers.Constant(perm.astype("int32")))

  def bijector(self, training=False):
    del training
    return tfb.Permute(tf.convert_to_tensor(self.permutation), axis=-1, name=self.name)
