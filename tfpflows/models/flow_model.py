"""`FlowModel`: a Keras 3 model that is a normalizing flow and trains with `fit`."""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.layers.actnorm import ActNormLayer

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
    TFP code; temperature `T` scales the base standard deviation (Glow's sampling).
  * `initialize(y)` is the explicit data-dependent initialisation of every ActNorm.
  * Mixed precision: under `keras.mixed_precision.set_global_policy("mixed_bfloat16")` (or
    `"mixed_float16"`) set before `build_flow`, the conditioner networks compute in low
    precision while the flow's arithmetic, log-densities and all weights stay float32.

  Args:
    flow: the root `BijectorLayer` (data side first, see `ChainLayer`).
    event_shape: data event shape, `[D]` or `[H, W, C]`.
    image: whether data are 8-bit images scaled as above.
    spec: the `build_flow` arguments, used by `get_config` for `model.save`.
  """

  def __init__(self, flow, event_shape, *, image=False, spec=None, **kwargs):
    # The flow's own arithmetic (log-dets, ActNorm, 1x1 convolutions) stays float32 under a
    # mixed-precision policy; only the conditioner networks follow the global Keras policy.
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.flow = flow
    self.event_shape = tuple(int(d) for d in event_shape)
    self.is_image = bool(image)
    self._spec = dict(spec or {})
    self.num_dims = int(np.prod(self.event_shape))
    self.nll_tracker = keras.metrics.Mean(name="nll")
    self.bpd_tracker = keras.metrics.Mean(name="bits_per_dim") if self.is_image else None

  def build(self, input_shape=None):
    """Creates every weight by one data-to-latent pass on zeros (conditioners build lazily)."""
    del input_shape
    self.flow.bijector().inverse(tf.zeros((1,) + self.event_shape))
    self.built = True

  # -- TFP objects built from the current weights --------------------------------------

  def _preprocess(self):
    if not self.is_image:
      return tfb.Identity()
    return tfb.Chain([tfb.Scale(256.), tfb.Shift(0.5)], name="pixels")

  def bijector(self, training=False):
    """`tfb.Chain([pixel scaling, flow])`: latent -> data in `forward`.

    `training=True` gives the training setting of stochastic layers (residual blocks'
    log-det estimator); the default is the evaluation setting.
    """
    return tfb.Chain([self._preprocess(), self.flow.bijector(training=training)], name="flow")

  @property
  def latent_shape(self):
    """Shape of one latent event (`encode`'s output): the data's shape for these flows."""
    return tuple(self.bijector().inverse_event_shape(self.event_shape).as_list())

  def distribution(self, temperature=1.0, training=False):
    """`tfd.TransformedDistribution(N(0, T^2 I), bijector())` from the current weights."""
    bijector = self.bijector(training=training)
    latent_shape = bijector.inverse_event_shape(self.event_shape)
    base = tfd.Sample(tfd.Normal(tf.zeros([], tf.float32),
                                 tf.cast(temperature, tf.float32)),
                      sample_shape=latent_shape)
    return tfd.TransformedDistribution(base, bijector, name="flow_distribution")

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
      cache[name] = tf.function(fn, reduce_retracing=True)
    return cache[name]

  def log_prob(self, y, training=False):
    fn = lambda y: self.distribution(training=training).log_prob(y)
    return self._graph(f"log_prob_{bool(training)}", fn)(tf.cast(y, tf.float32))

  def call(self, y, training=None):
    return self.log_prob(y, training=bool(training))

  def sample(self, n, temperature=1.0, seed=None):
    if seed is None:
      return self._graph("sample", lambda n, t: self.distribution(t).sample(n))(
          tf.constant(n, tf.int32), tf.constant(temperature, tf.float32))
    return self.distribution(temperature).sample(n, seed=seed)

  def encode(self, y):
    return self._graph("encode", lambda y: self.bijector().inverse(y))(tf.cast(y, tf.float32))

  def decode(self, z):
    return self._graph("decode", lambda z: self.bijector().forward(z))(tf.cast(z, tf.float32))

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
      ValueError: the batch gives fewer than 2 values per channel, or has the wrong shape.
    """
    if isinstance(y, tf.distribute.DistributedValues):
      strategy = self.distribute_strategy
      parts = strategy.experimental_local_results(y)
      batch = sum(int(p.shape[0]) for p in parts)
      self._check_init_batch(parts[0].shape[1:], batch)
      self._warm_up()
      strategy.run(self._data_init, args=(y,))
      return
    y = tf.convert_to_tensor(y, tf.float32)
    self._check_init_batch(y.shape[1:], int(y.shape[0]))
    self._warm_up()
    self._data_init(y)

  def _warm_up(self):
    """Residual blocks' spectral-norm warm-up, in the cross-replica context."""
    for layer in self._flatten_layers(include_self=False, recursive=True):
      if callable(getattr(layer, "warm_up", None)):
        layer.warm_up()

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
    """Mean negative log-likelihood, scaled for the replicas of a distribution strategy."""
    del x, y, sample_weight, training
    loss = -tf.reduce_mean(y_pred)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
      loss = loss / replicas
    return loss

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    del x, y, sample_weight
    self.nll_tracker.update_state(-y_pred)
    if self.bpd_tracker is not None:
      self.bpd_tracker.update_state(self.bits_per_dim(y_pred))
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
