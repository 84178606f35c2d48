"""Keras layers for planar, radial and Sylvester flows, and the layer list of such a model.

Each layer owns the raw (unconstrained) parameters. With `placement="density"` (the
default) it builds `tfb.Invert(<bijector>)`: the paper's map, exact and cheap with its
log-det, runs on the data-to-latent side (`log_prob`), and sampling uses the bijector's
iterative (planar, Sylvester) or closed-form (radial) inverse. With `placement="sample"` it
builds `<bijector>` itself: the map runs on the latent-to-data side, as Rezende & Mohamed
apply it to posterior samples, so `sample` and `experimental_sample_and_log_prob` are exact
and cheap (variational inference) and `log_prob` of other points needs the inverse.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.bijectors.planar import Planar
from tfpflows.bijectors.radial import Radial
from tfpflows.bijectors.sylvester import KINDS, Sylvester
from tfpflows.layers.actnorm import ActNormLayer
from tfpflows.layers.base import BijectorLayer, check_placement

tfb = tfp.bijectors

__all__ = ["PlanarLayer", "RadialLayer", "ReshapeLayer", "SIMPLE_NAMES", "SylvesterLayer",
           "simple_flow_layers"]

SIMPLE_NAMES = ("planar", "radial", "sylvester")

# softplus(_LOG_E_MINUS_1) = 1: where the planar constraint m(a) = -1 + softplus(a) is 0.
_LOG_E_MINUS_1 = math.log(math.e - 1.)


def _const(value):
  return keras.initializers.Constant(np.asarray(value, dtype="float32"))


def _placed(bijector, placement):
  return bijector if placement == "sample" else tfb.Invert(bijector)


def _check_dim(dim, label):
  dim = int(dim)
  if dim < 1:
    raise ValueError(f"{label}: dim must be >= 1, got {dim}")
  return dim


class PlanarLayer(BijectorLayer):
  """Owns a planar flow's `w [D]`, raw `u [D]` and `b []`; builds `Invert(Planar)` or `Planar`.

  Initialised near the identity: `w ~ N(0, I / D)`, `b = 0`, and `u` with its component
  along `w` set so that `w^T u_hat = m(w^T u) = 0`, plus `N(0, 10^-4 I / D)` noise, so
  `u_hat` is small.

  Args:
    dim: `D`.
    seed: seed of the initial values.
    placement: `"density"` (`Invert(Planar)`) or `"sample"` (`Planar`), see the module.
  """

  iterative = True   # inverse by bounded 1-D solves

  def __init__(self, dim, *, seed=0, placement="density", **kwargs):
    super().__init__(**kwargs)
    self.dim = _check_dim(dim, "PlanarLayer")
    self.placement = check_placement(placement, "PlanarLayer")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(self.dim) / math.sqrt(self.dim)
    u = _LOG_E_MINUS_1 * w / np.sum(w * w) + 0.01 * rng.standard_normal(self.dim) / math.sqrt(
        self.dim)
    self.w = self.add_weight(shape=(self.dim,), initializer=_const(w), name="w")
    self.u = self.add_weight(shape=(self.dim,), initializer=_const(u), name="u")
    self.b = self.add_weight(shape=(), initializer="zeros", name="b")

  def bijector(self, training=False):
    del training
    t = tf.convert_to_tensor
    return _placed(Planar(t(self.w), t(self.u), t(self.b), name=self.name), self.placement)


class RadialLayer(BijectorLayer):
  """Owns a radial flow's `z0 [D]`, raw `alpha []` and raw `beta []`; builds `Invert(Radial)` or `Radial`.

  Initialised near the identity: `z0 ~ N(0, I)`, `raw_alpha = 0` (alpha = log 2) and
  `raw_beta ~ N(0, 10^-4)`, so `beta = softplus(raw_beta) - alpha` is about 0.

  Args:
    dim: `D`.
    seed: seed of the initial values.
    placement: `"density"` (`Invert(Radial)`) or `"sample"` (`Radial`), see the module.
  """

  def __init__(self, dim, *, seed=0, placement="density", **kwargs):
    super().__init__(**kwargs)
    self.dim = _check_dim(dim, "RadialLayer")
    self.placement = check_placement(placement, "RadialLayer")
    rng = np.random.default_rng(seed)
    self.z0 = self.add_weight(shape=(self.dim,), initializer=_const(rng.standard_normal(self.dim)),
                              name="z0")
    self.raw_alpha = self.add_weight(shape=(), initializer="zeros", name="raw_alpha")
    self.raw_beta = self.add_weight(shape=(), initializer=_const(0.01 * rng.standard_normal()),
                                    name="raw_beta")

  def bijector(self, training=False):
    del training
    t = tf.convert_to_tensor
    return _placed(Radial(t(self.z0), t(self.raw_alpha), t(self.raw_beta), name=self.name),
                   self.placement)


class SylvesterLayer(BijectorLayer):
  """Owns a Sylvester flow's raw `Q`, `R`, `R~` and `b`; builds `Invert(Sylvester)` or `Sylvester`.

  Initialised near the identity: `R`'s raw entries `~ N(0, 10^-4)` (so `Q R h(.)` is small),
  `R~`'s `~ N(0, 1/4)`, `b = 0`, and `Q` from a Gaussian raw matrix (or Gaussian
  reflection vectors): a random orthonormal basis.

  Args:
    dim: `D`.
    num_hidden: `M <= D` for `kind="orthogonal"` (default `D`); must be None or `D` for
      `"householder"`.
    kind: `"orthogonal"` (Q by QR of a raw `[D, M]` matrix) or `"householder"` (Q a
      product of `num_reflections` reflections, `M = D`).
    num_reflections: `K` for `"householder"` (default `min(D, 8)`).
    seed: seed of the initial values.
    placement: `"density"` (`Invert(Sylvester)`) or `"sample"` (`Sylvester`), see the module.
  """

  iterative = True   # inverse by bounded 1-D solves

  def __init__(self, dim, *, num_hidden=None, kind="orthogonal", num_reflections=None,
               seed=0, placement="density", **kwargs):
    super().__init__(**kwargs)
    self.dim = _check_dim(dim, "SylvesterLayer")
    self.placement = check_placement(placement, "SylvesterLayer")
    if kind not in KINDS:
      raise ValueError(f"SylvesterLayer: kind must be one of {KINDS}, got {kind!r}")
    self.kind = kind
    if kind == "householder":
      if num_hidden not in (None, self.dim):
        raise ValueError(f"SylvesterLayer: householder needs num_hidden = D = {self.dim}, "
                         f"got {num_hidden}")
      self.num_hidden = self.dim
      k = min(self.dim, 8) if num_reflections is None else int(num_reflections)
      if k < 1:
        raise ValueError(f"SylvesterLayer: num_reflections must be >= 1, got {k}")
      q_shape = (k, self.dim)
    else:
      if num_reflections is not None:
        raise ValueError("SylvesterLayer: num_reflections applies to kind='householder' only, "
                         f"got {num_reflections}")
      self.num_hidden = self.dim if num_hidden is None else int(num_hidden)
      if not 1 <= self.num_hidden <= self.dim:
        raise ValueError(f"SylvesterLayer: num_hidden must be in [1, D = {self.dim}], "
                         f"got {self.num_hidden}")
      q_shape = (self.dim, self.num_hidden)
    m = self.num_hidden
    rng = np.random.default_rng(seed)
    self.q_raw = self.add_weight(shape=q_shape, initializer=_const(rng.standard_normal(q_shape)),
                                 name="q_raw")
    self.r_raw = self.add_weight(shape=(m, m), name="r_raw",
                                 initializer=_const(0.01 * rng.standard_normal((m, m))))
    self.r_tilde_raw = self.add_weight(shape=(m, m), name="r_tilde_raw",
                                       initializer=_const(0.5 * rng.standard_normal((m, m))))
    self.b = self.add_weight(shape=(m,), initializer="zeros", name="b")

  def bijector(self, training=False):
    del training
    t = tf.convert_to_tensor
    return _placed(Sylvester(t(self.q_raw), t(self.r_raw), t(self.r_tilde_raw), t(self.b),
                             kind=self.kind, name=self.name), self.placement)


class ReshapeLayer(BijectorLayer):
  """Reshapes data-side events `from_shape` to latent-side `to_shape` (`tfb.Reshape`)."""

  def __init__(self, from_shape, to_shape, **kwargs):
    super().__init__(**kwargs)
    self.from_shape = [int(d) for d in from_shape]
    self.to_shape = [int(d) for d in to_shape]
    if int(np.prod(self.from_shape)) != int(np.prod(self.to_shape)):
      raise ValueError(f"ReshapeLayer: shapes {self.from_shape} and {self.to_shape} have "
                       f"different sizes")

  def bijector(self, training=False):
    del training
    return tfb.Reshape(event_shape_out=self.from_shape, event_shape_in=self.to_shape,
                       name=self.name)


def simple_flow_layers(name, event_shape, *, num_steps, hidden=64, seed=0, kind="orthogonal",
                       actnorm=True, placement="density"):
  """The layers (data side first) of a planar, radial or Sylvester flow on `event_shape`.

  `[ActNorm(D)] + num_steps x <flow layer>` on vectors `[D]`; images `[H, W, C]` are
  flattened to `D = H W C` first and reshaped back at the end (the latent has the data's
  shape). The ActNorm (data-dependent init: `FlowModel.initialize`) standardises the data,
  which the flows' tanh and radial units assume. Wrap the list in a `ChainLayer`.

  Args:
    name: `"planar"`, `"radial"` or `"sylvester"`.
    event_shape: `[D]` or `[H, W, C]`.
    num_steps: number of flow layers.
    hidden: Sylvester's `M = min(D, hidden)` for the orthogonal kind, and its number of
      reflections `min(D, hidden)` for the Householder kind (where `M = D`); unused by the
      planar and radial flows.
    seed: layer `k` is initialised with `seed + k`.
    kind: Sylvester's `"orthogonal"` or `"householder"`.
    actnorm: whether to start with an ActNorm layer.
    placement: `"density"` or `"sample"`: the side of the explicit maps (see the module).

  Raises:
    ValueError: a one-line message for an unknown name or kind, or an impossible shape.
  """
  if name not in SIMPLE_NAMES:
    raise ValueError(f"unknown simple flow {name!r}; expected one of {', '.join(SIMPLE_NAMES)}")
  if kind not in KINDS:
    raise ValueError(f"unknown Sylvester kind {kind!r}; expected one of {', '.join(KINDS)}")
  event_shape = [int(d) for d in event_shape]
  if len(event_shape) not in (1, 3):
    raise ValueError(f"event_shape must be [D] or [H, W, C], got {event_shape}")
  check_placement(placement, "simple_flow_layers")
  if num_steps < 1 or hidden < 1:
    raise ValueError(f"num_steps and hidden must be positive, got {num_steps} and {hidden}")
  d = int(np.prod(event_shape))
  image = len(event_shape) == 3
  layers = [ReshapeLayer(event_shape, [d])] if image else []
  if actnorm:
    layers.append(ActNormLayer(d, event_ndims=1))
  for k in range(num_steps):
    if name == "planar":
      layers.append(PlanarLayer(d, seed=seed + k, placement=placement))
    elif name == "radial":
      layers.append(RadialLayer(d, seed=seed + k, placement=placement))
    elif kind == "orthogonal":
      layers.append(SylvesterLayer(d, num_hidden=min(d, hidden), seed=seed + k,
                                   placement=placement))
    else:
      layers.append(SylvesterLayer(d, kind="householder", num_reflections=min(d, hidden),
                                   seed=seed + k, placement=placement))
  if image:
    layers.append(ReshapeLayer([d], event_shape))
  return layers
