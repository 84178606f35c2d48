"""A bijector rebuilt from its weights on every use (`Deferred`): live weights for TFP code."""

import contextlib

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

tfb = tfp.bijectors

__all__ = ["Deferred"]

# Key of the built bijector in TFP's cache attributes of one forward / inverse edge.
_BUILT = "_deferred_bijector"


class _PerUseCache(cache_util.BijectorCache):
  """TFP's bijector cache, where each `forward` or `inverse` call is a new use.

  TFP returns the cached result of `forward(x)` while that result lives, and keeps the
  attributes of `x -> y` (the log-det among them) for as long as the input `x` lives. With
  variables both go stale: in TFP 0.25, `TransformedDistribution(Normal(0, 1),
  Scale(v)).log_prob(x)` keeps the log-det of the old `v` after `v.assign(...)`, and inside
  one `tf.function` trace (where every tensor stays alive) a second `log_prob(x)` after an
  update returns the first result, with no gradient. Here:

  * a `forward` (or `inverse`) of a tensor that already went that way starts a new use
    (a new build, new attributes): results are never reused across calls in one
    direction;
  * the way back is still a cache hit (`inverse(forward(x))` is `x` itself), as in TFP;
  * attributes of an edge whose result is gone, or that was never computed (a log-det
    asked for on its own), are cleared when next looked up: a log-det is shared only by
    the calls of one use (`log_prob`'s `inverse` and log-det, `sample_and_log_prob`'s
    `forward` and log-det).
  """

  def _get_or_create_edge(self, input, forward_name, kwargs):  # pylint: disable=redefined-builtin
    edge = super()._get_or_create_edge(input, forward_name, kwargs)
    if not edge.output_ref:         # never computed, or its output is gone: a new use
      edge.attributes.clear()
    return edge

  def _lookup(self, input, forward_name, inverse_name, **kwargs):  # pylint: disable=redefined-builtin
    edge = super()._get_or_create_edge(input, forward_name, kwargs)
    if edge.output_ref and edge.dependencies is None:
      # This tensor already went this way (an input's edge, not the way back from an
      # output): forget that use, so that this call builds and computes afresh.
      edge.input_ref.cancel()
      self.storage.pop(edge.input_ref, None)
    return super()._lookup(input, forward_name, inverse_name, **kwargs)


class Deferred(tfb.Bijector):
  r"""`build_fn()` built afresh at each use: `forward`, `inverse` and log-dets of the moment.

  .. math::
      \text{Deferred}(b).\mathrm{forward}(x) = b().\mathrm{forward}(x), \qquad
      \log|\det J| = \log|\det J_{b()}(x)|

  where `b()` is called when the bijector is *used*, not when it is made. A bijector built
  from tensor values (`tf.convert_to_tensor(v)` of each weight, a spectral norm computed
  once, a seed drawn once) is a snapshot: built once and used under a later
  `tf.GradientTape`, it gives no gradient to those weights and does not see updates. Wrapped
  in `Deferred`, the same construction runs inside every call, so one object, made once,
  trains every weight in eager mode, inside `tf.function`, under `tfp.math.minimize` and
  `tfp.vi.fit_surrogate_posterior`, and always reflects the current values (the idea of
  `tfp.experimental.util.DeferredModule`, here as a genuine `tfb.Bijector` that composes
  with `tfb.Chain`, `tfb.Invert` and `tfd.TransformedDistribution`).

  One call is one build: the `inverse` (or `forward`) of a tensor and the log-det of the same
  tensor, as `log_prob` and `experimental_sample_and_log_prob` ask for them, share the build
  through TFP's cache (one network evaluation, one draw of a stochastic estimator).

  `variables` are the `tf.Variable`s `build_fn` reads: they are what `trainable_variables`
  and `variables` list (TFP's optimisers and `tf.Module` tracking see nothing inside
  `build_fn`), so that `fit_surrogate_posterior(..., trainable_variables=None)` and
  `tape.watched_variables()` find them.

  Caching: every `forward` or `inverse` call is a new use, which builds afresh (also
  within one `tf.function` trace); the way back (`inverse(forward(x))`) is a cache hit as in
  TFP, and a log-det is shared only by the calls of one use (see `_PerUseCache`).

  The bijector must preserve event shapes (`forward_event_shape(s) = s`).

  Args:
    build_fn: callable with no arguments returning a `tfb.Bijector` on events of rank
      `event_ndims`, built from the current values of `variables`.
    event_ndims: rank of one event.
    variables: the `tf.Variable`s behind `build_fn`, for tracking.
    dtype: the events' dtype.
    context: optional callable with no arguments returning a context manager, entered
      around every build and every use (the built bijector's networks run inside it). A
      `keras.StatelessScope` that maps each weight to `tf.stop_gradient` of its value
      makes the bijector read the current weights with their gradients stopped, as
      `FlowModel.distribution(stop_gradient=True)` does.
    event_shape: optional shape of one event (length `event_ndims`): inputs whose static
      trailing dimensions differ are refused with a one-line `ValueError` before anything
      is built (TFP's distributions pass any shape through to the networks).
  """

  _cache = _PerUseCache()

  def __init__(self, build_fn, *, event_ndims, variables=(), dtype=tf.float32,
               context=None, event_shape=None, validate_args=False, name="deferred"):
    parameters = dict(locals())
    if isinstance(variables, tf.Variable):
      raise TypeError("Deferred: variables must be a list of tf.Variables, got one "
                      "tf.Variable (wrap it in a list)")
    parameters["variables"] = tuple(variables)   # kept, so that `copy()` keeps them
    if not callable(build_fn):
      raise TypeError(f"Deferred: build_fn must be callable, got {type(build_fn).__name__}")
    if context is not None and not callable(context):
      raise TypeError(f"Deferred: context must be callable or None, got "
                      f"{type(context).__name__}")
    with tf.name_scope(name) as name:
      self._build_fn = build_fn
      self._context = context if context is not None else contextlib.nullcontext
      if isinstance(event_ndims, bool) or not isinstance(event_ndims, int) or event_ndims < 0:
        raise ValueError(f"Deferred: event_ndims must be an integer >= 0, got {event_ndims!r}")
      self._event_ndims = event_ndims
      self._event_shape = None if event_shape is None else tuple(event_shape)
      if self._event_shape is not None and len(self._event_shape) != event_ndims:
        raise ValueError(f"Deferred: event_shape {list(self._event_shape)} must have "
                         f"event_ndims = {event_ndims} dimensions")
      self._tracked = tuple(variables)
      for v in self._tracked:
        if not isinstance(v, tf.Variable):
          raise TypeError(f"Deferred: variables must be tf.Variables, got {type(v).__name__}")
      super().__init__(forward_min_event_ndims=self._event_ndims, is_constant_jacobian=False,
                       validate_args=validate_args, dtype=dtype, parameters=parameters,
                       name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def build_fn(self):
    return self._build_fn

  def build(self):
    """The bijector of the current weights (a snapshot: use it at once or not at all).

    Built inside `context` (if any), but not used there: with a `context`, use the
    `Deferred` itself.
    """
    with self._context():
      return self._build_fn()

  def _built(self, attrs, t, side):
    """`(bijector, t_)` of one cache edge, `side` "x" or "y" being the side of `t`.

    An edge is built by its first use and reused by the others. The built bijector is given
    `tf.identity` of the first input, a tensor of this use only: TFP's cache keys results
    by input tensor and bijector, and compares eager bijectors by their parameters'
    *values* (networks by identity), so a bijector built later with equal values would
    otherwise be handed an earlier use's results, computed outside the current gradient
    tape. A later request from the other side of the edge gets `t` itself, which is then
    the built bijector's own (cached) output.
    """
    built = attrs.get(_BUILT)
    if built is None:
      self._check_event_shape(t)
      built = attrs[_BUILT] = (self._build_fn(), tf.identity(t), side)
    bijector, first, first_side = built
    return bijector, (first if side == first_side else t)

  def _check_event_shape(self, t):
    if self._event_shape is None or t.shape.rank is None:
      return
    k = len(self._event_shape)
    trailing = tuple(t.shape[t.shape.rank - k:]) if t.shape.rank >= k else None
    if trailing is None or any(d is not None and d != e
                               for d, e in zip(trailing, self._event_shape)):
      raise ValueError(f"{self.name}: expected events of shape {list(self._event_shape)}, "
                       f"i.e. an input of shape [..., "
                       f"{', '.join(map(str, self._event_shape))}]; got shape "
                       f"{t.shape.as_list()}")

  def _forward(self, x):
    with self._context():
      bijector, x_ = self._built(self._cache.forward_attributes(x), x, "x")
      return bijector.forward(x_)

  def _inverse(self, y):
    with self._context():
      bijector, y_ = self._built(self._cache.inverse_attributes(y), y, "y")
      return bijector.inverse(y_)

  def _forward_log_det_jacobian(self, x):
    with self._context():
      bijector, x_ = self._built(self._cache.forward_attributes(x), x, "x")
      return bijector.forward_log_det_jacobian(x_, event_ndims=self._event_ndims)

  def _inverse_log_det_jacobian(self, y):
    with self._context():
      bijector, y_ = self._built(self._cache.inverse_attributes(y), y, "y")
      return bijector.inverse_log_det_jacobian(y_, event_ndims=self._event_ndims)
