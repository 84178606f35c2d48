r"""`CIFModel`: continuously indexed flows as a Keras model trained by the ELBO with `fit`.

A CIF (Cornish et al. 2020) stacks `L` layers, each a bijection `F_l(.; u_l)` indexed by a
continuous `u_l` (`layers.CIFLayer`), on a standard normal base. Generatively
`z_L ~ N(0, I)`, then for `l = L..1`: `u_l ~ p_l(u | z_l)`, `z_{l-1} = F_l(z_l; u_l)`, and
`x = z_0`. The joint density of `x` and `u = (u_1..u_L)` is exact,

.. math::
    \log p(x, u) = \log N(z_L; 0, I) + \sum_l \big[\log|\det J_{F_l^{-1}(.; u_l)}(z_{l-1})|
                   + \log p_l(u_l \mid z_l)\big],

while `p(x)` needs the integral over `u`. With the inference network
`q(u | x) = prod_l q_l(u_l | h_l)` (`h_l` the base map's output in layer `l`) and
`log w = log p(x, u) - log q(u | x)`, `u ~ q`:

.. math::
    \mathrm{ELBO}(x) = E_q[\log w] \le \log \hat p_K(x) = \log \tfrac1K \textstyle\sum_k w_k,
    \qquad E[\log \hat p_K(x)] \le \log p(x),

the importance-sampled estimate tightening with `K` (Burda et al. 2016).

References:
  Cornish, Caterini, Deligiannidis & Doucet, "Relaxing Bijectivity Constraints with
  Continuously Indexed Normalising Flows", ICML 2020.
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows.layers import cif_multiscale
from tfpflows.models.flow_model import (_checked_sample_args, check_finite_batch,
                                        check_weights_allowed, neumann_layers,
                                        warm_up_layers)

tfd = tfp.distributions

# The reference code's evaluation defaults for the importance-sampled log-likelihood.
DEFAULT_NUM_SAMPLES = {"vector": 100, "image": 10}


def _check_num_samples(value, owner):
  """`K` as a Python int (checked: ValueError) or, for a tensor, an int32 tensor with a
  graph assertion `K >= 1` (InvalidArgumentError, kept in SavedModels)."""
  if tf.is_tensor(value):
    if not value.dtype.is_integer:
      raise ValueError(f"{owner}: num_samples must be a positive integer; got a "
                       f"{value.dtype.name} tensor")
    if not tf.is_symbolic_tensor(value):
      return _check_num_samples(int(value), owner)
    value = tf.cast(value, tf.int32)
    check = tf.debugging.assert_positive(
        value, message=f"{owner}: num_samples must be a positive integer")
    with tf.control_dependencies([check]):
      return tf.identity(value)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{owner}: num_samples must be a positive integer; got {value!r}")
  return int(value)


@keras.saving.register_keras_serializable(package="tfpflows")
class CIFModel(keras.Model):
  r"""A continuously indexed flow (see the module) that trains with `compile()` and `fit()`.

  * `joint_log_prob(x, us)`: the exact `log p(x, u_1..u_L)` (`us` data side first).
  * `elbo(x)`: one draw of `u ~ q(u | x)` per example, `log w`, `[batch]`.
  * `log_prob(x, num_samples=K)`: `log (1/K sum_k w_k)`, `[batch]`; `K` defaults to
    `default_num_samples` (100 for vectors, 10 for images, the reference code's).
  * `sample(n, temperature)`: exact ancestral samples (`temperature` scales the base).
  * `encode(x)` / `decode(z)`: data to base latent `z_L` with `u ~ q(u | x)`, and base
    latent to data with `u ~ p(u | z)` (one draw each; `decode(z)` of `z ~ N(0, I)` is an
    exact sample).
  * `diagnostics(x)`: health figures (per layer the gap `log q(u|h) - log p(u|z)`, the
    importance weights' effective sample size, residual blocks' figures).
  * `fit`: the loss is `-mean ELBO` (`train_num_samples = 1`), or the `K`-sample bound
    `-mean log p_K(x)` for `train_num_samples = K > 1`. Metrics: `elbo` (the mean
    `log w`) and `nll`, the negative bound: `-ELBO` in training with `K = 1`, and at
    evaluation (`evaluate`, validation) `-log_prob(x)` with `default_num_samples`; for
    images also `bits_per_dim` from it.

  Images (`image=True`, pixel values in `[0, 256)`) are mapped to `x / 256 - 0.5` first, as
  in `FlowModel` (its log-det, `-D log 256`, is in every density), and the model's stages
  are multi-scale (`layers.cif_multiscale`: squeezes, CIF layers with one `u` channel per
  pixel at each scale, factor-outs); the base latent keeps the data's shape.

  Args:
    stages: the model's stages, data side first: `layers.CIFLayer`s (one index `u` each) and
      the stages of `layers.cif_multiscale` (fixed maps, chains, factor-outs). `cif_layers`
      lists the CIF layers among them, data side first (the order of `us`).
    event_shape: `[D]` or `[H, W, C]`.
    train_num_samples: `K` of the training bound (1: the ELBO). `K > 1` is refused
      (ValueError) over residual blocks with the Neumann log-det gradient, which assumes
      equal weights for every draw.
    default_num_samples: `K` of `log_prob`, evaluation and the SavedModel's `log_prob`
      (None: 100 for vectors, 10 for images).
    spec: the `build_flow` arguments, for `get_config`.
  """

  def __init__(self, stages, event_shape, *, train_num_samples=1, default_num_samples=None,
               image=False, spec=None, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.stages = list(stages)
    if not self.cif_layers:
      raise ValueError("CIFModel: expected at least one CIFLayer among the stages; got none")
    self.event_shape = tuple(int(d) for d in event_shape)
    self.is_image = bool(image)
    self.num_dims = int(np.prod(self.event_shape))
    self.train_num_samples = _check_num_samples(train_num_samples, "CIFModel")
    if self.train_num_samples > 1:
      # The K-sample bound weights each draw by its normalised importance weight, but the
      # Neumann log-det gradient assumes the same upstream gradient for every row.
      neumann = neumann_layers(self)
      if neumann:
        raise ValueError(f"train_num_samples: {neumann[0]} uses the Neumann log-det gradient, "
                         f"which assumes equal weights for every draw; expected 1 (the ELBO) "
                         f"for this base flow, got {self.train_num_samples}")
    if default_num_samples is None:
      default_num_samples = DEFAULT_NUM_SAMPLES["image" if self.is_image else "vector"]
    self.default_num_samples = _check_num_samples(default_num_samples, "CIFModel")
    self._spec = dict(spec or {})
    self.elbo_tracker = keras.metrics.Mean(name="elbo")
    self.nll_tracker = keras.metrics.Mean(name="nll")
    self.bpd_tracker = keras.metrics.Mean(name="bits_per_dim") if self.is_image else None
    self.sample_seed_generator = keras.random.SeedGenerator(
        None if not self._spec else int(self._spec.get("seed", 0)) + 15485863,
        name="sample_seed")

  @property
  def cif_layers(self):
    """The CIF layers (`layers.CIFLayer`, one index `u_l` each), data side first."""
    return [layer for stage in self.stages for layer in stage.indexed_layers()]

  def build(self, input_shape=None):
    del input_shape
    for stage in self.stages:
      stage.build()
    # One pass creates the weights of every network built on first use (factor-out priors).
    self._pass(tf.zeros((1,) + self.event_shape), seed=tf.constant([0, 0], tf.int32))
    self.built = True

  # -- densities -----------------------------------------------------------------------

  def _base(self, temperature=1.0):
    return tfd.Independent(tfd.Normal(tf.zeros(self.event_shape), temperature),
                           reinterpreted_batch_ndims=len(self.event_shape))

  def _seeds(self, seed, training):
    if seed is None:   # the layers' own streams
      return [layer.next_seed(training) for layer in self.cif_layers]
    return tf.unstack(tfp.random.split_seed(seed, len(self.cif_layers)))

  def _seed_map(self, seed, training):
    return dict(zip(self.cif_layers, self._seeds(seed, training)))

  def _to_unit(self, x):
    """Pixels `[0, 256)` to `x / 256 - 0.5` for images; `(y, log|det|)`, the log-det a
    Python float (`-D log 256`), 0 for vectors."""
    if not self.is_image:
      return x, 0.
    return x / 256. - 0.5, -self.num_dims * math.log(256.)

  def _from_unit(self, y):
    return (y + 0.5) * 256. if self.is_image else y

  def _infer(self, x, *, seeds=None, us=None, training=False):
    """Data to base latent through every stage: `(z, log_joint, log_q, drawn)`."""
    x, log_det = self._to_unit(x)
    return cif_multiscale.infer_stages(
        self.stages, x, seeds=seeds, us=us, training=training,
        log_joint=tf.fill(tf.shape(x)[:1], tf.cast(log_det, x.dtype)))

  def _generate(self, z, seeds):
    return self._from_unit(cif_multiscale.generate_stages(self.stages, z, seeds=seeds))

  def _pass(self, x, *, training=False, seed=None, us=None):
    """Data to latent through every stage: `(log p(x, u), log q(u | x), [u_l])`, `[batch]`."""
    # Given indices need no seeds (and leave the layers' seed streams where they are).
    seeds = self._seed_map(seed, training) if us is None else None
    us = None if us is None else dict(zip(self.cif_layers, us))
    z, log_joint, log_q, drawn = self._infer(x, seeds=seeds, us=us, training=training)
    return (log_joint + self._base().log_prob(z), log_q,
            [drawn[layer] for layer in self.cif_layers])

  def _checked(self, x, method):
    x = tf.convert_to_tensor(x, tf.float32)
    k = len(self.event_shape)
    if x.shape.rank != k + 1 or tuple(x.shape[1:]) != self.event_shape:
      raise ValueError(f"{method}: expected a batch of shape [batch, "
                       f"{', '.join(map(str, self.event_shape))}]; got shape "
                       f"{x.shape.as_list()}")
    return x

  def joint_log_prob(self, x, us):
    """The exact `log p(x, u_1..u_L)`, `[batch]`; `us` data side first, `[batch, *u_shape]`."""
    x = self._checked(x, "joint_log_prob")
    if len(us) != len(self.cif_layers):
      raise ValueError(f"joint_log_prob: expected {len(self.cif_layers)} indices u (one per "
                       f"layer); got {len(us)}")
    return self._pass(x, us=[tf.convert_to_tensor(u, x.dtype) for u in us])[0]

  def log_weights(self, x, num_samples=1, *, training=False, seed=None):
    """`log w_k = log p(x, u_k) - log q(u_k | x)` for `K` draws `u_k ~ q`: `[K, batch]`."""
    x = self._checked(x, "log_weights")
    k = _check_num_samples(num_samples, "log_weights")
    tiled = tf.reshape(tf.tile(x[None], tf.concat([[k], tf.ones([x.shape.rank], tf.int32)], 0)),
                       tf.concat([[-1], self.event_shape], 0))
    log_joint, log_q, _ = self._pass(tiled, training=training, seed=seed)
    return tf.reshape(log_joint - log_q, [k, -1])

  def elbo(self, x, *, seed=None):
    """One-draw ELBO estimate `log p(x, u) - log q(u | x)`, `u ~ q(u | x)`: `[batch]`."""
    return self.log_weights(x, 1, seed=seed)[0]

  def log_prob(self, x, num_samples=None, *, seed=None):
    """The importance-sampled `log (1/K sum_k w_k)`, `[batch]`: a lower bound on `log p(x)`
    in expectation, tightening with `K` (`num_samples`, default `default_num_samples`)."""
    k = self.default_num_samples if num_samples is None else num_samples
    return _iw_bound(self.log_weights(x, k, seed=seed))

  def importance_diagnostics(self, x, num_samples=None, *, seed=None):
    """`{"log_prob": [batch], "ess": [batch]}`: the estimate and the effective sample size
    `(sum w)^2 / sum w^2` of its `K` weights (`K` if q were the exact posterior)."""
    k = self.default_num_samples if num_samples is None else num_samples
    log_w = self.log_weights(x, k, seed=seed)
    ess = tf.exp(2. * tf.reduce_logsumexp(log_w, 0) - tf.reduce_logsumexp(2. * log_w, 0))
    return {"log_prob": _iw_bound(log_w), "ess": ess}

  def sample(self, n, temperature=1.0, seed=None):
    """`n` exact ancestral samples `[n, *event_shape]`; `temperature` scales the base."""
    n, temperature = _checked_sample_args(n, temperature)
    if seed is None:
      seed = tf.cast(self.sample_seed_generator.next(), tf.int32)
    seeds = tf.unstack(tfp.random.split_seed(seed, len(self.cif_layers) + 1))
    z = self._base(temperature).sample(n, seed=seeds[-1])
    return self._generate(z, dict(zip(reversed(self.cif_layers), seeds[:-1])))

  @property
  def latent_shape(self):
    """Shape of the base latent `z_L` (`encode`'s output): the data's shape."""
    return self.event_shape

  def encode(self, x, *, seed=None):
    """`z_L` of data `x` `[batch, *event_shape]`, one draw `u_l ~ q(u | h_l)` per layer."""
    x = self._checked(x, "encode")
    return self._infer(x, seeds=self._seed_map(seed, False))[0]

  def decode(self, z, *, seed=None):
    """Data from base latents `z` `[batch, *event_shape]`, one draw `u_l ~ p(u | z_l)` per
    layer (for `z ~ N(0, T^2 I)`, exact samples at temperature `T`)."""
    z = self._checked(z, "decode")
    if seed is None:
      seed = tf.cast(self.sample_seed_generator.next(), tf.int32)
    seeds = tf.unstack(tfp.random.split_seed(seed, len(self.cif_layers)))
    return self._generate(z, dict(zip(reversed(self.cif_layers), seeds)))

  def diagnostics(self, x, num_samples=None):
    """Health figures on a data batch `x`, a flat dict of floats (evaluation seeds).

    * `"<layer>/u_gap"`: the batch mean of `log q(u | h) - log p(u | z)` for one draw
      `u ~ q` (its expectation is the KL-like gap that layer's index costs the ELBO; large
      and growing means `p(u | z)` cannot follow `q`).
    * `"<layer>/<block figure>"`: a residual base's figures (`ResidualLayer.diagnose`).
    * `"ess"` and `"ess_fraction"`: the effective sample size `(sum w)^2 / sum w^2` of the
      `K = num_samples` (default `default_num_samples`) importance weights, batch mean,
      and it divided by `K` (1 when `q(u | x)` is the exact posterior).
    """
    x = self._checked(x, "diagnostics")
    report = {}
    seeds = {layer: layer.next_seed(False) for layer in self.cif_layers}
    cif_multiscale.diagnose_stages(self.stages, self._to_unit(x)[0], report, seeds=seeds)
    k = self.default_num_samples if num_samples is None else num_samples
    ess = self.importance_diagnostics(x, k)["ess"]
    out = {f"{name}/{key}": float(keras.ops.convert_to_numpy(value))
           for name, entries in report.items() for key, value in entries.items()}
    out["ess"] = float(tf.reduce_mean(ess))
    out["ess_fraction"] = out["ess"] / int(k)
    return out

  def bits_per_dim(self, log_prob):
    return -log_prob / (self.num_dims * math.log(2.))

  # -- training ------------------------------------------------------------------------

  def initialize(self, x):
    """Data-dependent initialisation of the base maps' ActNorms and residual blocks'
    spectral-norm warm-up, data side first, as `FlowModel.initialize` (the indexed affine
    maps start near the identity, so each layer's `h` stands in for the next one's input).

    `x` is a batch `[B, *event_shape]` or a per-replica value from a distributed dataset
    (each ActNorm then uses the global batch's statistics).

    Raises:
      ValueError: (one line) a batch of the wrong shape, of fewer than 2 values per
        channel, or holding NaN or Inf (nothing is initialised then).
    """
    if isinstance(x, tf.distribute.DistributedValues):
      strategy = self.distribute_strategy
      parts = strategy.experimental_local_results(x)
      for part in parts:
        self._checked(part, "initialize")
        check_finite_batch(part)
      self._check_init_batch(sum(int(p.shape[0]) for p in parts))
      warm_up_layers(self)
      strategy.run(self._data_init, args=(x,))
      return
    x = self._checked(x, "initialize")
    self._check_init_batch(int(x.shape[0]))
    check_finite_batch(x)
    warm_up_layers(self)
    self._data_init(x)

  def _check_init_batch(self, batch):
    if batch * int(np.prod(self.event_shape[:-1])) < 2:
      raise ValueError(f"initialize: a batch of {batch} is too small to initialise ActNorm; "
                       f"expected at least 2 examples")

  def _data_init(self, x):
    cif_multiscale.data_init_stages(self.stages, self._to_unit(x)[0])

  def call(self, x, training=None):
    """The log importance weights `[K, batch]`: `K = train_num_samples` in training, else
    `default_num_samples` (what `compute_loss` and the metrics reduce)."""
    k = self.train_num_samples if training else self.default_num_samples
    return self.log_weights(x, k, training=bool(training))

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """`-mean_i log p_K(x_i)` from the weights `y_pred` `[K, batch]` (the negative ELBO for
    `K = 1`), scaled for the replicas of a distribution strategy."""
    del x, y, training
    objective = _iw_bound(y_pred)
    if sample_weight is not None:
      check_weights_allowed(self)
      objective = objective * tf.reshape(tf.cast(sample_weight, objective.dtype),
                                         tf.shape(objective))
    loss = -tf.reduce_mean(objective)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    del x, y
    self.elbo_tracker.update_state(tf.reduce_mean(y_pred, 0), sample_weight=sample_weight)
    log_p = _iw_bound(y_pred)
    self.nll_tracker.update_state(-log_p, sample_weight=sample_weight)
    if self.bpd_tracker is not None:
      self.bpd_tracker.update_state(self.bits_per_dim(log_p), sample_weight=sample_weight)
    return self.get_metrics_result()

  # -- serialisation -------------------------------------------------------------------

  def get_config(self):
    if not self._spec:
      raise NotImplementedError("CIFModel.get_config: only models made by build_flow can be "
                                "serialised with model.save; use save_weights instead")
    return dict(self._spec)

  @classmethod
  def from_config(cls, config):
    from tfpflows.models.architectures import build_flow  # pylint: disable=g-import-not-at-top
    return build_flow(**config)


def _iw_bound(log_w):
  """`logsumexp_k(log w_k) - log K` over the first axis."""
  k = tf.cast(tf.shape(log_w)[0], log_w.dtype)
  return tf.reduce_logsumexp(log_w, 0) - tf.math.log(k)
