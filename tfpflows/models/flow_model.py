"""`FlowModel`: a Keras 3 model that is a normalizing flow and trains with `fit`."""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.layers.actnorm import ActNormLayer
from tfpflows.layers.base import tf_variable

tfb, tfd = tfp.bijectors, tfp.distributions


def _spans_workers(strategy):
  """True for a `MultiWorkerMirroredStrategy` whose cluster has more than one worker."""
  extended = getattr(strategy, "extended", None)
  in_multi_worker = getattr(extended, "_in_multi_worker_mode", None)
  return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
          and callable(in_multi_worker) and in_multi_worker())


@keras.saving.register_keras_serializable(package="tfpflows")
class FlowModel(keras.Model):
  r"""A normalizing flow `p(y) = N(f^{-1}(y); 0, I) |det J_{f^{-1}}(y)|` as a Keras model.

  The Keras side owns every weight (in `flow`, a `tfpflows.layers.BijectorLayer`); each
  call builds the pure TFP objects from the current values, so `model.fit` trains all of
  them (see STACK notes on Keras 3 and TFP variable tracking).

  * `model(y)` and `log_prob(y)` return `log p(y)`, `[batch]`, in the units of the data
    (for images, pixel values in `[0, 256)`: a fixed `tfb.Scale(256) o tfb.Shift(0.5)` on the
    data side maps the flow's `[-0.5, 0.5]` to them, so bits/dim `= -log p(y) / (D ln 2)`).
  * `compile(optimizer=...)` needs no loss: the loss is the mean negative log-likelihood.
    Metrics: `nll` (nats per example) and, for images, `bits_per_dim`.
  * `distribution(temperature)` is a `tfd.TransformedDistribution` that composes with any
    TFP code; temperature `T` scales the base standard deviation (Glow's sampling). It is
    live, as `bijector()` is: built once, it reads the current weights at each use, so
    custom loops, `tfp.math.minimize` and `tfp.vi.fit_surrogate_posterior` train every
    weight through it (`tf_trainable_variables` are the `tf.Variable`s TFP expects).
  * `initialize(y)` is the explicit data-dependent initialisation of every ActNorm.
  * Mixed precision: under `keras.mixed_precision.set_global_policy("mixed_bfloat16")` (or
    `"mixed_float16"`) set before `build_flow`, the conditioner networks compute in low
    precision while the flow's arithmetic, log-densities and all weights stay float32.

  Args:
    flow: the root `BijectorLayer` (data side first, see `ChainLayer`).
    event_shape: data event shape, `[D]` or `[H, W, C]`.
    image: whether data are 8-bit images scaled as above.
    spec: the `build_flow` arguments, used by `get_config` for `model.save`.
    base: optional Keras layer with a `distribution(temperature, reparameterize)` method
      (`tfpflows.layers.GaussianMixtureBase`) replacing the standard normal base; its
      weights train with the flow's. `distribution(stop_gradient=True)` also passes it
      `stop_gradient=True` (a live copy with its weights' gradients stopped).
  """

  def __init__(self, flow, event_shape, *, image=False, spec=None, base=None, **kwargs):
    # The flow's own arithmetic (log-dets, ActNorm, 1x1 convolutions) stays float32 under a
    # mixed-precision policy; only the conditioner networks follow the global Keras policy.
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.flow = flow
    self.base = base
    self.event_shape = tuple(int(d) for d in event_shape)
    self.is_image = bool(image)
    self._spec = dict(spec or {})
    self.num_dims = int(np.prod(self.event_shape))
    self.nll_tracker = keras.metrics.Mean(name="nll")
    self.bpd_tracker = keras.metrics.Mean(name="bits_per_dim") if self.is_image else None

  def build(self, input_shape=None):
    """Creates every weight by one data-to-latent pass on zeros (conditioners build lazily)."""
    del input_shape
    flow = self.flow.bijector()
    flow.inverse(tf.zeros((1,) + self.event_shape))
    latent = tuple(flow.inverse_event_shape(self.event_shape).as_list())
    if latent != self.event_shape:   # `bijector()` (a `Deferred`) relies on it
      raise ValueError(f"FlowModel: the flow must map events of shape {self.event_shape} to "
                       f"latents of the same shape; got {latent}")
    self.built = True
    self.__dict__.pop("_tf_variables", None)

  # -- TFP objects built from the current weights --------------------------------------

  def _preprocess(self):
    if not self.is_image:
      return tfb.Identity()
    return tfb.Chain([tfb.Scale(256.), tfb.Shift(0.5)], name="pixels")

  def bijector(self, training=False, stop_gradient=False):
    """The flow as a live `tfb.Bijector`, latent -> data in `forward` (pixel scaling included).

    Live: the bijector is rebuilt from the current weights each time it is used
    (`tfpflows.bijectors.Deferred`), so one object, made once, trains every weight under
    `tf.GradientTape` (eager or `tf.function`), `tfp.math.minimize` and
    `tfp.vi.fit_surrogate_posterior`, and always sees the latest values. Its
    `trainable_variables` are the model's (`tf_trainable_variables`).

    `training=True` gives the training setting of stochastic layers (residual blocks'
    log-det estimator, with a fresh seed at every use); the default is the evaluation
    setting.

    `stop_gradient=True`: the same map and log-dets of the current weights, with no
    gradient to any weight (each is read as `tf.stop_gradient` of its value, inside a
    `keras.StatelessScope`, which also keeps state updates such as power iterations from
    being written); gradients to the bijector's inputs are unchanged. What
    `tfp.vi`'s `stopped_surrogate_posterior` needs (see `distribution`). With
    `training=True` the stochastic log-det of residual blocks draws from the seed state as
    it stands (the scope discards the seed's advance too), so repeated uses between two
    uses of the live copy repeat one draw; each live use moves it on. Use the `Deferred`
    itself: its `build()` returns a bijector whose networks read the live weights when
    used outside the scope.
    """
    context = self._stopped_weights if stop_gradient else None
    return bijectors.Deferred(lambda: self.snapshot_bijector(training=training),
                              event_ndims=len(self.event_shape), variables=self.tf_variables,
                              context=context, event_shape=self.event_shape,
                              name="flow_stopped" if stop_gradient else "flow")

  def _stopped_weights(self):
    """A `keras.StatelessScope` in which every weight reads as its value, gradient stopped."""
    return keras.StatelessScope(state_mapping=[
        (w, tf.stop_gradient(tf.convert_to_tensor(tf_variable(w)))) for w in self.weights])

  def snapshot_bijector(self, training=False):
    """`tfb.Chain([pixel scaling, flow])` built from the weights' values *now*.

    A snapshot: its parameters are tensors, so a snapshot kept and used after the weights
    change gives stale results and no gradients to the weights. Build it inside the
    computation that uses it, or use the live `bijector()`.
    """
    return tfb.Chain([self._preprocess(), self.flow.bijector(training=training)], name="flow")

  @property
  def tf_variables(self):
    """Every weight as the `tf.Variable` TFP expects (Keras 3 variables wrap one each)."""
    if "_tf_variables" not in self.__dict__:
      self.__dict__["_tf_variables"] = tuple(tf_variable(v) for v in self.weights)
    return self.__dict__["_tf_variables"]

  @property
  def tf_trainable_variables(self):
    """The trainable weights as `tf.Variable`s: what to pass as TFP's `trainable_variables`.

    `model.trainable_variables` (Keras variables) is what Keras' own optimisers and `fit`
    use; TFP's `fit_surrogate_posterior`, `minimize` and `tf.GradientTape.watch` want
    these. The model's `distribution()` and `bijector()` list them too.
    """
    return tuple(v for v in self.tf_variables if v.trainable)

  @property
  def latent_shape(self):
    """Shape of one latent event (`encode`'s output): the data's shape (checked by `build`)."""
    return self.event_shape

  def distribution(self, temperature=1.0, training=False, name=None, stop_gradient=False):
    r"""`tfd.TransformedDistribution(base, bijector())`: live, like `bijector()`.

    The base is `N(0, T^2 I)` (or the model's learnable `base`, its scales times `T`).
    Built once, the distribution reads the current weights at every `log_prob`, `sample`
    and `experimental_sample_and_log_prob`; `trainable_variables` lists every weight
    (`tf_trainable_variables`). `training=True` is the setting to optimise: residual
    blocks' unbiased log-det estimator, a mixture base's reparameterised samples. `name`
    (default: TFP's) is what a `JointDistribution` refers to it by.

    `stop_gradient=True`: the same distribution, still live, with every weight's gradient
    stopped (flow and base), so `log_prob(x)` differentiates only through `x`. This is
    `tfp.vi`'s `stopped_surrogate_posterior`, for the sticking-the-landing gradient
    (Roeder et al. 2017) :math:`\nabla_\theta[\log \tilde p(x_\theta) -
    \log q_{\bar\theta}(x_\theta)]`, :math:`x_\theta = f_\theta(z)`, which drops the
    score term :math:`-\nabla_\theta \log q_\theta(x)|_x` (mean zero, but noisy) and is
    exactly zero when `q` equals the target::

        loss = tfp.vi.monte_carlo_variational_loss(
            target_log_prob_fn, model.distribution(training=True), sample_size=64,
            gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
            stopped_surrogate_posterior=model.distribution(training=True,
                                                           stop_gradient=True))

    (`tfpflows.vi.fit_surrogate(..., gradient_estimator="stl")` runs it.) Its `log_prob`
    of a sample inverts the flow: explicit for couplings, iterative for maps placed on the
    sampling side.
    """
    bijector = self.bijector(training=training, stop_gradient=stop_gradient)
    if self.base is not None:
      # a custom base that follows the two-argument protocol keeps working unstopped
      extra = {"stop_gradient": True} if stop_gradient else {}
      base = self.base.distribution(temperature, reparameterize=training, **extra)
    else:
      base = tfd.Sample(tfd.Normal(tf.zeros([], tf.float32),
                                   tf.cast(temperature, tf.float32)),
                        sample_shape=self.latent_shape)
    kwargs = {} if name is None else {"name": name}
    return tfd.TransformedDistribution(base, bijector, **kwargs)

  def _iterative(self):
    """Whether some layer inverts or estimates iteratively (`iterative = True`)."""
    if "_has_iterative" not in self.__dict__:
      self.__dict__["_has_iterative"] = any(
          getattr(l, "iterative", False) for l in self._flatten_layers(recursive=True))
    return self.__dict__["_has_iterative"]

  def _graph(self, name, fn):
    """`fn` as a `tf.function` when called eagerly (cached per method) in a model with
    iterative layers, else `fn` itself.

    Iterative parts (fixed-point inverses, power iteration, series) run op by op in eager
    mode; one traced graph per method makes eager calls of `log_prob`, `sample`, `encode`
    and `decode` fast. Inside `fit` or another `tf.function` the plain method is traced.
    """
    if not tf.executing_eagerly() or not self._iterative():
      return fn
    cache = self.__dict__.setdefault("_eager_graphs", {})
    if name not in cache:
      cache[name] = tf.function(fn, reduce_retracing=True, autograph=False)
    return cache[name]

  def _per_event(self, name, method, fn, y, shape=None):
    """`fn` on `y` of shape `[*batch, *shape]`: any batch rank (0 for one event), flattened
    to one batch axis for `fn` and restored on its output.

    Raises:
      ValueError: (one line) `y`'s trailing dimensions are not `shape` (default: the events').
    """
    shape = self.event_shape if shape is None else tuple(shape)
    y = tf.cast(y, tf.float32)
    rank, k = y.shape.rank, len(shape)
    if rank is None:
      return self._graph(name, fn)(y)
    trailing = tuple(y.shape[rank - k:]) if rank >= k else None
    if rank < k or any(d is not None and d != e for d, e in zip(trailing, shape)):
      raise ValueError(f"{method}: expected events of shape {list(shape)}, i.e. an input of "
                       f"shape [..., {', '.join(map(str, shape))}]; got shape "
                       f"{y.shape.as_list()}")
    if rank == k + 1:
      return self._graph(name, fn)(y)
    batch = tf.shape(y)[:rank - k]
    out = self._graph(name, fn)(tf.reshape(y, tf.concat([[-1], shape], 0)))
    return tf.reshape(out, tf.concat([batch, tf.shape(out)[1:]], 0))

  def log_prob(self, y, training=False):
    """`log p(y)`: `[batch]` for `y` of shape `[batch, *event_shape]`, a scalar for one event.

    Raises:
      ValueError: (one line) `y` is not of shape `[batch, *event_shape]` or `event_shape`.
    """
    fn = lambda y: self.distribution(training=training).log_prob(y)
    return self._per_event(f"log_prob_{bool(training)}", "log_prob", fn, y)

  def call(self, y, training=None):
    return self.log_prob(y, training=bool(training))

  def sample(self, n, temperature=1.0, seed=None):
    """`n` samples `[n, *event_shape]` at `temperature` (a finite number > 0).

    Raises:
      ValueError: (one line) `n` is not an integer >= 0, or `temperature` is not finite > 0.
        Tensors are checked in the graph (`InvalidArgumentError`, also in a SavedModel).
    """
    n, temperature = _checked_sample_args(n, temperature)
    if seed is None:
      return self._graph("sample", lambda n, t: self.distribution(t).sample(n))(n, temperature)
    return self.distribution(temperature).sample(n, seed=seed)

  def encode(self, y):
    """The latent `f^{-1}(y)` of data `y` (`[batch, *event_shape]` or one event)."""
    return self._per_event("encode", "encode", lambda y: self.bijector().inverse(y), y)

  def decode(self, z):
    """The data `f(z)` of latents `z` (`[batch, *latent_shape]` or one latent)."""
    return self._per_event("decode", "decode", lambda z: self.bijector().forward(z), z,
                           self.latent_shape)

  def bits_per_dim(self, log_prob):
    return -log_prob / (self.num_dims * math.log(2.))

  # -- data-dependent initialisation ---------------------------------------------------

  def _actnorm_layers(self):
    return [l for l in self._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, ActNormLayer)]

  @property
  def initialized(self):
    """True when every ActNorm has been initialised (a saved, restored flag)."""
    return all(bool(keras.ops.convert_to_numpy(l.initialized)) for l in self._actnorm_layers())

  def _min_values_per_channel(self, batch):
    return batch * int(np.prod(self.event_shape[:-1]))

  def initialize(self, y):
    """Data-dependent initialisation of every ActNorm on a batch `y`, data side first.

    Residual blocks first warm up their spectral normalisation (`ResidualLayer.warm_up`).
    `y` is a batch `[B, *event_shape]`, or a per-replica value from a distributed dataset
    (`strategy.experimental_distribute_dataset`), in which case each ActNorm uses the
    statistics of the global batch (all-reduced across replicas).

    Raises:
      ValueError: (one line) the batch gives fewer than 2 values per channel, has the
        wrong shape, or holds NaN or Inf (nothing is initialised then).
    """
    if isinstance(y, tf.distribute.DistributedValues):
      strategy = self.distribute_strategy
      parts = strategy.experimental_local_results(y)
      batch = sum(int(p.shape[0]) for p in parts)
      self._check_init_batch(parts[0].shape[1:], batch)
      for part in parts:
        check_finite_batch(part)
      self._warm_up()
      strategy.run(self._data_init, args=(y,))
      return
    y = tf.convert_to_tensor(y, tf.float32)
    if y.shape.rank != len(self.event_shape) + 1:
      raise ValueError(f"initialize: expected a batch of shape [batch, "
                       f"{', '.join(map(str, self.event_shape))}]; got shape {y.shape.as_list()}")
    self._check_init_batch(y.shape[1:], int(y.shape[0]))
    check_finite_batch(y)
    self._warm_up()
    self._data_init(y)

  def _warm_up(self):
    """Residual blocks' spectral-norm warm-up, in the cross-replica context."""
    warm_up_layers(self)

  def _check_init_batch(self, event_shape, batch):
    if tuple(event_shape) != self.event_shape:
      raise ValueError(f"initialize: expected a batch of events of shape {self.event_shape}, "
                       f"got {tuple(event_shape)}")
    if self._min_values_per_channel(batch) < 2:
      raise ValueError(f"a batch of {batch} is too small to initialise ActNorm: it needs at "
                       f"least 2 values per channel")

  def _data_init(self, y):
    self.flow.data_init(self._preprocess().inverse(tf.cast(y, tf.float32)))

  def fit(self, x=None, *args, **kwargs):
    """`keras.Model.fit`; `sample_weight` weights each example's NLL (see `compute_loss`).

    Keras drops `sample_weight` when there is no `y`, and flows have none: here a dummy `y`
    carries it through (`x` arrays; datasets may yield `(x, None, w)` themselves).

    Raises:
      ValueError: `sample_weight` for a model that cannot weight examples (Neumann
        gradient), or `class_weight` (flows have no classes).
    """
    if kwargs.get("class_weight") is not None:
      raise ValueError("class_weight: flows have no classes; expected None, got a dict "
                       "(use sample_weight)")
    if kwargs.get("sample_weight") is not None:
      check_weights_allowed(self)
      if not args and kwargs.get("y") is None and not isinstance(x, tf.data.Dataset):
        kwargs["y"] = np.zeros([len(kwargs["sample_weight"])], np.float32)
    if isinstance(x, tf.data.Dataset):
      kwargs.setdefault("shuffle", False)   # a Dataset shuffles itself; spares Keras' warning
    if not self.initialized:
      import warnings  # pylint: disable=g-import-not-at-top
      warnings.warn("FlowModel.fit: ActNorm is not initialised; call model.initialize(batch) "
                    "first for Glow's data-dependent initialisation", stacklevel=2)
    self._build_optimizer()
    return super().fit(x, *args, **kwargs)

  def _build_optimizer(self):
    """Creates the optimizer's slots before `fit` traces its train function.

    Without a distribution strategy Keras 3 (TF backend) defers this to the first trace, and
    a `tf.function` that creates variables on its first call is traced a second time (the
    first `fit` call of an 8-block 2D residual flow: 44 s before, 33 s after, on 2 cores).
    """
    if self.optimizer is None or self.optimizer.built or not self.trainable_variables:
      return
    with self.distribute_strategy.scope():
      self.optimizer.build(self.trainable_variables)

  def diagnostics(self, y):
    """Health figures of the residual blocks on a data batch `y`, as a flat dict.

    Keys `"<block>/<figure>"` (see `ResidualLayer.diagnose`: Lipschitz bound, series
    length, the log-det estimate's spread, the fixed-point inverse's iterations and
    residual); empty for flows without residual blocks.
    """
    from tfpflows.layers.residual import ResidualLayer  # pylint: disable=g-import-not-at-top
    if not any(isinstance(l, ResidualLayer) for l in self._flatten_layers(recursive=True)):
      return {}
    report = {}
    self.flow.diagnose(self._preprocess().inverse(tf.cast(y, tf.float32)), report)
    return {f"{block}/{key}": float(keras.ops.convert_to_numpy(value))
            for block, entries in report.items() for key, value in entries.items()}

  # -- training ------------------------------------------------------------------------

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """Mean negative log-likelihood, scaled for the replicas of a distribution strategy.

    With `sample_weight` `w` (`fit(x, sample_weight=w)` or datasets of `(x, None, w)`), the
    loss is Keras' `sum_over_batch_size` reduction `mean_i(w_i * nll_i)`. Residual Flows'
    Neumann log-det gradient computes its parameter gradient for equal example weights, so
    models with it refuse weights (ValueError) rather than train on a wrong gradient.
    """
    del x, y, training
    nll = -y_pred
    if sample_weight is not None:
      check_weights_allowed(self)
      weight = tf.reshape(tf.cast(sample_weight, nll.dtype), tf.shape(nll))
      with tf.control_dependencies([tf.debugging.assert_greater_equal(
          weight, tf.zeros([], weight.dtype),
          message="sample_weight: expected finite weights >= 0")]):
        nll = nll * tf.debugging.assert_all_finite(
            weight, "sample_weight: expected finite weights >= 0")
    loss = tf.reduce_mean(nll)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
      loss = loss / replicas
    return loss

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    del x, y
    self.nll_tracker.update_state(-y_pred, sample_weight=sample_weight)
    if self.bpd_tracker is not None:
      self.bpd_tracker.update_state(self.bits_per_dim(y_pred), sample_weight=sample_weight)
    results = self.get_metrics_result()
    if _spans_workers(tf.distribute.get_strategy()):
      # Keras 3 reduces logs across workers with `strategy.reduce("MEAN", v, axis=0)`,
      # which rejects scalars ("Invalid reduction dimension 0"): give it rank-1 values.
      results = {k: tf.reshape(v, [1]) for k, v in results.items()}
    return results

  # -- serialisation -------------------------------------------------------------------

  def get_config(self):
    if not self._spec:
      raise NotImplementedError("FlowModel.get_config: only models made by build_flow can be "
                                "serialised with model.save; use save_weights instead")
    return dict(self._spec)

  @classmethod
  def from_config(cls, config):
    from tfpflows.models.architectures import build_flow  # pylint: disable=g-import-not-at-top
    return build_flow(**config)


def neumann_layers(model):
  """Names of the layers under `model` whose training gradient assumes the same upstream
  gradient for every row (Residual Flows' Neumann log-det gradient)."""
  return [l.name for l in model._flatten_layers(recursive=True)  # pylint: disable=protected-access
          if getattr(getattr(l, "train_logdet", None), "neumann_gradient", False)]


def check_weights_allowed(model):
  """ValueError (one line) if some layer's gradient assumes equal example weights (Residual
  Flows' Neumann log-det gradient), for a loss given `sample_weight`."""
  blocked = neumann_layers(model)
  if blocked:
    raise ValueError(f"sample_weight: {model.name} uses the Neumann log-det gradient "
                     f"({blocked[0]}), which assumes equal example weights; expected no "
                     f"sample_weight for this model, got one")


def warm_up_layers(model):
  """Calls `warm_up()` of every layer under `model` that has one (residual blocks)."""
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if callable(getattr(layer, "warm_up", None)):
      layer.warm_up()


def check_finite_batch(y):
  bad = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(y), tf.int32)))
  if bad:
    raise ValueError(f"initialize: expected a batch of finite values; got {bad} NaN or "
                     f"infinite entries")


def _checked_sample_args(n, temperature):
  """`n` and `temperature` as tensors, checked: in Python when their values are known
  (ValueError), as graph assertions otherwise (InvalidArgumentError, kept in SavedModels)."""
  if isinstance(n, (bool, np.bool_)) or not (
      tf.is_tensor(n) or isinstance(n, (int, np.integer))):
    raise ValueError(f"sample: n must be an integer >= 0; got {n!r}")
  if tf.is_tensor(n) and not n.dtype.is_integer:
    raise ValueError(f"sample: n must be an integer >= 0; got a {n.dtype.name} tensor")
  if not tf.is_symbolic_tensor(n) and int(n) < 0:
    raise ValueError(f"sample: n must be an integer >= 0; got {int(n)}")
  if not tf.is_symbolic_tensor(temperature):
    try:
      value = float(temperature)
    except (TypeError, ValueError):
      raise ValueError(f"sample: temperature must be a finite number > 0; got "
                       f"{temperature!r}") from None
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"sample: temperature must be a finite number > 0; got {value}")
  n = tf.cast(n, tf.int32)
  temperature = tf.cast(temperature, tf.float32)
  if not (tf.is_symbolic_tensor(n) or tf.is_symbolic_tensor(temperature)):
    return n, temperature
  message = "sample: temperature must be a finite number > 0"
  checks = [
      tf.debugging.assert_non_negative(n, message="sample: n must be an integer >= 0"),
      tf.debugging.assert_greater(temperature, 0., message=message),
      tf.debugging.assert_less(temperature, float("inf"), message=message),
      tf.debugging.assert_equal(temperature, temperature, message=message),  # not NaN
  ]
  with tf.control_dependencies(checks):
    return tf.identity(n), tf.identity(temperature)
