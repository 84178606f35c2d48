"""Lipschitz-constrained networks `g` for residual flows `F(x) = x + g(x)`.

A residual block is invertible when `Lip(g) < 1` (Behrmann et al., 2019). Each linear
layer here is spectrally normalised: with `sigma` a power-iteration estimate of the
operator norm of its kernel `W`,

.. math:: \\hat W = W / \\max(1, \\sigma / c), \\qquad \\|\\hat W\\|_2 \\le c,

and every activation is 1-Lipschitz, so `Lip(g) <= c ** num_linear_layers`
(`LipschitzNetwork.lipschitz_bound()`).

Power iteration (Miyato et al., 2018) keeps persistent unit vectors `u`, `v` as
non-trainable weights. `call(x, training=True)` runs `n_iterations` steps from them and
writes the result back (the vectors follow the kernel as it trains); `training` False or
None runs `eval_iterations` steps from them and does **not** write back, so evaluation has
no side effect and repeated calls give the same output. `sigma = u^T W v` is computed with
`u`, `v` held constant, so the gradient reaches `W` through `sigma` too, as in
`torch.nn.utils.spectral_norm`.

For a convolution the iteration runs on the convolution *operator* for the input spatial
size seen at `build` (`v: [1, H, W, C_in]`, `u: [1, H', W', C_out]`, with `conv2d` and its
adjoint `conv2d_transpose`), as `InducedNormConv2d` of Residual Flows does; a 1x1
convolution uses its `[C_in, C_out]` matrix, whose norm is the operator's.

Notes:
  * `sigma` is a lower bound on the true norm, so `coeff` holds up to the power-iteration
    error. Call `update_vectors(200)` once after building (an explicit initialisation step):
    from random vectors, one step per training call lags by several percent for a while on
    convolutions, whose top singular values are close. `tolerance` iterates to convergence
    in every training call instead (Residual Flows' setting), at a higher cost.
  * Every evaluation call runs `eval_iterations` steps (two convolutions of one image each,
    per step); a fixed-point inverse calling `g` many times pays them each time.
    `eval_iterations=0` uses the stored vectors, as torch does at evaluation.
  * `training` must be a Python bool or None (as Keras passes it).

References:
  Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible Residual Networks. ICML 2019.
  Chen, Behrmann, Duvenaud, Jacobsen. Residual Flows for Invertible Generative Modeling.
  NeurIPS 2019 (code: github.com/rtqichen/residual-flows, `lib/layers/base/lipschitz.py`).
  Miyato, Kataoka, Koyama, Yoshida. Spectral Normalization for GANs. ICLR 2018.
"""

import functools

import keras
import tensorflow as tf

# (Operator key, argument shapes and dtype) -> the power iteration as a `tf.function`,
# for eager calls (`_power_iteration`), each traced once. Layers whose operators and
# shapes agree share it: the 24 layers of an 8-block 2D residual flow trace 3 graphs, not
# 24. One function per shape, not one retraced per shape: TF would warn of "retracing"
# when a model has many shapes. Kept off the layers (a `tf.function` attribute would be
# tracked into SavedModels); the graphs stay for the process's life, one per shape.
_EAGER_ITERATION = {}


def _power_loop(op, adjoint, epsilon, tol, kernel, u, v, n):
  """At most `n` steps `u <- op(W, v) / ||.||`, `v <- adjoint(W, u) / ||.||` (a
  `tf.while_loop`); with `tol`, stops once both unit vectors move less than `tol`."""

  def normalize(x, old):
    norm = tf.norm(tf.reshape(x, [-1]))
    return tf.where(norm > epsilon, x / tf.maximum(norm, epsilon), old)

  def body(i, _, u, v):
    u_new = normalize(op(kernel, v), u)
    v_new = normalize(adjoint(kernel, u_new), v)
    if tol is None:
      done = tf.constant(False)
    else:
      done = tf.logical_and(tf.norm(tf.reshape(u_new - u, [-1])) < tol,
                            tf.norm(tf.reshape(v_new - v, [-1])) < tol)
    return i + 1, done, u_new, v_new

  _, _, u, v = tf.while_loop(lambda i, done, u, v: tf.logical_and(i < n, tf.logical_not(done)),
                             body, (tf.constant(0), tf.constant(False), u, v),
                             maximum_iterations=n)
  return u, v


def _matvec_op(kernel, v):
  return tf.linalg.matvec(kernel, v, transpose_a=True)


def _matvec_adjoint(kernel, u):
  return tf.linalg.matvec(kernel, u)


def _conv_op(padding, kernel, v):
  return tf.nn.conv2d(v, kernel, strides=1, padding=padding)


def _conv_adjoint(padding, v_shape, kernel, u):
  return tf.nn.conv2d_transpose(u, kernel, output_shape=v_shape, strides=1, padding=padding)


_SERIALIZABLE = keras.saving.register_keras_serializable(package="tfpflows")


def _check_common(coeff, n_iterations, eval_iterations):
  if not coeff > 0:
    raise ValueError(f"coeff must be > 0, got {coeff!r}")
  if int(n_iterations) != n_iterations or n_iterations < 0:
    raise ValueError(f"n_iterations must be an int >= 0, got {n_iterations!r}")
  if int(eval_iterations) != eval_iterations or eval_iterations < 0:
    raise ValueError(f"eval_iterations must be an int >= 0, got {eval_iterations!r}")


class _UnitNormal(keras.initializers.Initializer):
  """A standard normal draw scaled to unit Euclidean norm (the power-iteration start)."""

  def __init__(self, seed=None):
    self.seed = seed

  def __call__(self, shape, dtype=None):
    x = keras.initializers.RandomNormal(stddev=1.0, seed=self.seed)(shape, dtype=dtype)
    return x / keras.ops.sqrt(keras.ops.sum(keras.ops.square(x)))

  def get_config(self):
    return {"seed": self.seed}


class _SpectralNormBase(keras.layers.Layer):
  """Shared power iteration and normalisation; subclasses define the operator.

  Subclasses set `self.kernel`, `self.bias` (or None), `self.u`, `self.v` in `build` and
  implement `_operator()` (a key and pure functions `op(kernel, v) -> u-shaped`,
  `adjoint(kernel, u) -> v-shaped`) and `_apply(x, kernel)`. `op` and `adjoint` take the
  kernel in the form returned by `_iteration_kernel` (the 1x1 convolution's matrix).
  """

  def __init__(self, *, coeff=0.98, n_iterations=1, eval_iterations=None, tolerance=None,
               use_bias=True, zero_init=False, kernel_initializer="glorot_uniform",
               bias_initializer="zeros", seed=None, epsilon=1e-12, **kwargs):
    super().__init__(**kwargs)
    eval_iterations = 20 if eval_iterations is None else eval_iterations
    _check_common(coeff, n_iterations, eval_iterations)
    if tolerance is not None and not tolerance > 0:
      raise ValueError(f"tolerance must be None or > 0, got {tolerance!r}")
    self.tolerance = None if tolerance is None else float(tolerance)
    self.coeff = float(coeff)
    self.n_iterations = int(n_iterations)
    self.eval_iterations = int(eval_iterations)
    self.use_bias = bool(use_bias)
    self.zero_init = bool(zero_init)
    self.kernel_initializer = keras.initializers.get(
        "zeros" if zero_init else kernel_initializer)
    self.bias_initializer = keras.initializers.get("zeros" if zero_init else bias_initializer)
    self.seed = seed
    self.epsilon = float(epsilon)

  # -- weights -------------------------------------------------------------------------

  def _add_vectors(self, u_shape, v_shape):
    # ONLY_FIRST_REPLICA (as ActNormLayer): `call` assigns inside the replica context;
    # every replica computes the same vectors from the same kernel, and the first
    # replica's value is written to all copies.
    seed_u = None if self.seed is None else int(self.seed)
    seed_v = None if self.seed is None else int(self.seed) + 1
    self.u = self.add_weight(shape=u_shape, initializer=_UnitNormal(seed_u), trainable=False,
                             autocast=False, name="u", aggregation="only_first_replica")
    self.v = self.add_weight(shape=v_shape, initializer=_UnitNormal(seed_v), trainable=False,
                             autocast=False, name="v", aggregation="only_first_replica")

  # -- power iteration -----------------------------------------------------------------

  def _iteration_kernel(self, kernel):
    return kernel

  def _operator(self):
    """`(key, op, adjoint)`: the power iteration's operator as pure functions of
    `(kernel, vector)`; layers with equal keys iterate identically (shared eager traces)."""
    return ("matvec",), _matvec_op, _matvec_adjoint

  def _power_iteration(self, kernel, u, v, n):
    """At most `n` steps `u <- W v / ||W v||`, `v <- W^T u / ||W^T u||`, no gradient.

    With `tolerance`, stops once both unit vectors change by less than `tolerance` in a step
    (Euclidean norm; stricter than Residual Flows' per-entry root-mean-square test, which
    for a convolution's vectors of `H W C` entries is loose).

    Executing eagerly, the loop runs as one graph, traced once per operator kind and
    argument shapes (shared by layers), not as one Python round trip per step: eager
    start-up (the warm-up, data initialisation, plots, diagnostics) would otherwise spend
    seconds here.
    """
    kernel = tf.stop_gradient(self._iteration_kernel(kernel))
    if n == 0:
      return u, v
    key, op, adjoint = self._operator()
    if tf.executing_eagerly():
      key = key + (self.epsilon, self.tolerance, tuple(kernel.shape), tuple(u.shape),
                   tuple(v.shape), kernel.dtype.name)
      compiled = _EAGER_ITERATION.get(key)
      if compiled is None:
        compiled = _EAGER_ITERATION[key] = tf.function(
            functools.partial(_power_loop, op, adjoint, self.epsilon, self.tolerance),
            autograph=False)
      return compiled(kernel, u, v, tf.constant(n, tf.int32))
    return _power_loop(op, adjoint, self.epsilon, self.tolerance, kernel, u, v, n)

  def _vectors(self, kernel, training):
    u = tf.convert_to_tensor(self.u.value)
    v = tf.convert_to_tensor(self.v.value)
    kernel = tf.cast(kernel, u.dtype)
    if training:
      u, v = self._power_iteration(kernel, u, v, self.n_iterations)
      if self.n_iterations > 0:
        self.u.assign(u)
        self.v.assign(v)
    else:
      u, v = self._power_iteration(kernel, u, v, self.eval_iterations)
    return tf.stop_gradient(u), tf.stop_gradient(v)

  def _sigma(self, kernel, u, v):
    """`|u^T W v|`: differentiable in `W`, with `u`, `v` constants (> 0 after one step)."""
    kernel = self._iteration_kernel(tf.cast(kernel, u.dtype))
    return tf.abs(tf.reduce_sum(u * self._operator()[1](kernel, v)))

  def normalized_kernel(self, training=False):
    """`W / max(1, sigma / coeff)`: the kernel `call` uses (same iteration and write-back)."""
    kernel = tf.convert_to_tensor(self.kernel.value)
    u, v = self._vectors(kernel, bool(training))
    sigma = self._sigma(kernel, u, v)
    factor = tf.maximum(tf.ones([], sigma.dtype), sigma / self.coeff)
    return kernel / tf.cast(factor, kernel.dtype)

  def _iterate_stored(self, n):
    kernel = tf.convert_to_tensor(self.kernel.value)
    u = tf.convert_to_tensor(self.u.value)
    u, v = self._power_iteration(tf.cast(kernel, u.dtype), u, tf.convert_to_tensor(self.v.value),
                                 n)
    return kernel, u, v

  def spectral_norm(self, n_iterations=None):
    """Estimated operator norm of the normalised kernel, `min(sigma, coeff)` (logging).

    `sigma` is the estimate after `n_iterations` (default `eval_iterations`) power-iteration
    steps from the stored vectors, which are not updated.
    """
    n = self.eval_iterations if n_iterations is None else int(n_iterations)
    kernel, u, v = self._iterate_stored(n)
    return tf.minimum(self._sigma(kernel, u, v), self.coeff)

  def update_vectors(self, n_iterations):
    """Runs `n_iterations` power-iteration steps, stores `u`, `v`; returns the raw `sigma`.

    A warm-up before training, as Residual Flows runs 200 steps at construction: from the
    random start, one step per training call takes many steps to converge on a
    convolution, whose top singular values are close.
    """
    kernel, u, v = self._iterate_stored(int(n_iterations))
    self.u.assign(u)
    self.v.assign(v)
    return self._sigma(kernel, u, v)

  # -- forward -------------------------------------------------------------------------

  def call(self, x, training=None):
    kernel = self.normalized_kernel(training=bool(training))
    y = self._apply(x, tf.cast(kernel, x.dtype))
    if self.bias is not None:
      y = y + tf.cast(self.bias, y.dtype)
    return y

  def get_config(self):
    config = super().get_config()
    config.update(coeff=self.coeff, n_iterations=self.n_iterations,
                  eval_iterations=self.eval_iterations, tolerance=self.tolerance,
                  use_bias=self.use_bias,
                  zero_init=self.zero_init,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                  bias_initializer=keras.initializers.serialize(self.bias_initializer),
                  seed=self.seed, epsilon=self.epsilon)
    return config


@_SERIALIZABLE
class SpectralNormDense(_SpectralNormBase):
  """Dense layer `y = x \\hat W + b` with `||\\hat W||_2 <= coeff` (spectral normalisation).

  Args:
    units: output size.
    coeff: the bound `c` on the layer's operator norm (Lipschitz constant).
    n_iterations: power-iteration steps per training call (written back to `u`, `v`).
    eval_iterations: steps at evaluation (`training` False/None), not written back;
      default 20. 0 uses the stored vectors as they are (cheapest, as torch does).
    tolerance: if set, `n_iterations` and `eval_iterations` are maxima and the iteration
      stops early once both vectors change by less than this in a step (Residual Flows
      trains with a tolerance of 1e-3 and at most 200 steps per call).
    use_bias: whether to add a bias.
    zero_init: zero kernel and bias, so that `g = 0` and a new residual block is the identity.
    kernel_initializer, bias_initializer: Keras initializers (ignored with `zero_init`).
    seed: seed of the random unit start vectors `u`, `v`.
    epsilon: below this norm an iterate is not normalised and the previous vector is kept.

  Shapes: `x: [..., d_in] -> [..., units]`; `u: [units]`, `v: [d_in]`.
  """

  def __init__(self, units, *, coeff=0.98, n_iterations=1, eval_iterations=None, use_bias=True,
               zero_init=False, **kwargs):
    super().__init__(coeff=coeff, n_iterations=n_iterations, eval_iterations=eval_iterations,
                     use_bias=use_bias, zero_init=zero_init, **kwargs)
    if int(units) != units or units < 1:
      raise ValueError(f"units must be an int >= 1, got {units!r}")
    self.units = int(units)

  def build(self, input_shape):
    d_in = input_shape[-1]
    if d_in is None:
      raise ValueError(f"SpectralNormDense needs a known last axis, got input shape "
                       f"{tuple(input_shape)}")
    self.kernel = self.add_weight(shape=(d_in, self.units), initializer=self.kernel_initializer,
                                  name="kernel")
    self.bias = (self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                 name="bias") if self.use_bias else None)
    self._add_vectors((self.units,), (d_in,))

  def _apply(self, x, kernel):
    return keras.ops.matmul(x, kernel)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.units,)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units)
    return config


@_SERIALIZABLE
class SpectralNormConv2D(_SpectralNormBase):
  """2-D convolution (stride 1, NHWC) with operator norm `<= coeff` for its input size.

  The power iteration runs on the linear map `x -> conv2d(x, W)` for inputs of the spatial
  size `[H, W]` seen at `build` (which must be known); the bound holds for that size.
  For a `1 x 1` kernel it runs on the `[C_in, C_out]` matrix, whose norm is the operator's
  for any size. Other arguments as `SpectralNormDense`.

  Shapes: `x: [B, H, W, C_in] -> [B, H', W', filters]` (`H' = H` with "same" padding);
  `u: [1, H', W', filters]`, `v: [1, H, W, C_in]` (`[filters]`, `[C_in]` for 1x1).
  """

  def __init__(self, filters, kernel_size, *, coeff=0.98, n_iterations=1, eval_iterations=None,
               padding="same", use_bias=True, zero_init=False, **kwargs):
    super().__init__(coeff=coeff, n_iterations=n_iterations, eval_iterations=eval_iterations,
                     use_bias=use_bias, zero_init=zero_init, **kwargs)
    if int(filters) != filters or filters < 1:
      raise ValueError(f"filters must be an int >= 1, got {filters!r}")
    kernel_size = ((kernel_size, kernel_size) if isinstance(kernel_size, int)
                   else tuple(kernel_size))
    if len(kernel_size) != 2 or min(kernel_size) < 1:
      raise ValueError(f"kernel_size must be an int or a pair of ints >= 1, got {kernel_size!r}")
    if str(padding).lower() not in ("same", "valid"):
      raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    self.filters = int(filters)
    self.kernel_size = tuple(int(k) for k in kernel_size)
    self.padding = str(padding).lower()
    self._is_1x1 = self.kernel_size == (1, 1)

  def _output_spatial(self, h, w):
    if self.padding == "same":
      return h, w
    return h - self.kernel_size[0] + 1, w - self.kernel_size[1] + 1

  def build(self, input_shape):
    if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
      raise ValueError(f"SpectralNormConv2D needs an input shape [B, H, W, C] with known H, W, "
                       f"C, got {tuple(input_shape)}")
    _, h, w, c_in = (int(d) if d is not None else None for d in input_shape)
    h_out, w_out = self._output_spatial(h, w)
    if h_out < 1 or w_out < 1:
      raise ValueError(f"kernel_size {self.kernel_size} with 'valid' padding is larger than the "
                       f"input size {(h, w)}")
    self.input_spatial = (h, w)
    self.kernel = self.add_weight(shape=self.kernel_size + (c_in, self.filters),
                                  initializer=self.kernel_initializer, name="kernel")
    self.bias = (self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                 name="bias") if self.use_bias else None)
    if self._is_1x1:
      self._add_vectors((self.filters,), (c_in,))
    else:
      self._add_vectors((1, h_out, w_out, self.filters), (1, h, w, c_in))

  def _iteration_kernel(self, kernel):
    return kernel[0, 0] if self._is_1x1 else kernel

  def _operator(self):
    if self._is_1x1:
      return ("matvec",), _matvec_op, _matvec_adjoint
    padding, v_shape = self.padding.upper(), tuple(self.v.shape)
    return (("conv", padding, v_shape), functools.partial(_conv_op, padding),
            functools.partial(_conv_adjoint, padding, v_shape))

  def _apply(self, x, kernel):
    return tf.nn.conv2d(x, kernel, strides=1, padding=self.padding.upper())

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    h_out, w_out = self._output_spatial(h, w)
    return (b, h_out, w_out, self.filters)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size, padding=self.padding)
    return config


# -- activations ---------------------------------------------------------------------------


@_SERIALIZABLE
class LipSwish(keras.layers.Layer):
  """`f(x) = x sigmoid(beta x) / 1.1`, `beta = softplus(raw_beta) > 0` learned (1-Lipschitz).

  `d/dx [x sigmoid(beta x)] = s + t s (1 - s)` with `t = beta x`, `s = sigmoid(t)`, whose
  maximum over `t` is about 1.0998 for every `beta`, so dividing by 1.1 makes `f`
  1-Lipschitz. `raw_beta` starts at 0.5 (`beta ~ 0.974`), as Residual Flows' and normflows'
  `Swish`. Chen et al. (2019), section 4.3.
  """

  def __init__(self, raw_beta_init=0.5, **kwargs):
    super().__init__(**kwargs)
    self.raw_beta_init = float(raw_beta_init)

  def build(self, input_shape):
    self.raw_beta = self.add_weight(shape=(), initializer=keras.initializers.Constant(
        self.raw_beta_init), name="raw_beta")

  @property
  def beta(self):
    return tf.nn.softplus(tf.convert_to_tensor(self.raw_beta))

  def call(self, x):
    beta = tf.cast(self.beta, x.dtype)
    return x * tf.sigmoid(beta * x) / 1.1

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(raw_beta_init=self.raw_beta_init)
    return config


_ACTIVATIONS = ("lipswish", "elu", "tanh", "softplus")


def lipschitz_activation(name):
  """A new 1-Lipschitz activation layer: "lipswish", "elu" (alpha 1), "tanh", "softplus"."""
  if name == "lipswish":
    return LipSwish()
  if name in _ACTIVATIONS:
    return keras.layers.Activation(name)
  raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {name!r}")


# -- networks ------------------------------------------------------------------------------


@_SERIALIZABLE
class LipschitzNetwork(keras.layers.Layer):
  """A chain of layers `g`, 1-Lipschitz activations and spectrally normalised linear maps.

  `call(x, training=None)` passes `training` to every sublayer that takes it (the
  spectral-norm layers: power iteration with write-back in training).
  `lipschitz_bound()` is the product of the spectral-norm layers' `spectral_norm()`,
  an upper bound on `Lip(g)` up to the power-iteration error, since the activations are
  1-Lipschitz.
  """

  def __init__(self, layers, **kwargs):
    super().__init__(**kwargs)
    self.net_layers = list(layers)

  @property
  def spectral_layers(self):
    return [l for l in self.net_layers if isinstance(l, _SpectralNormBase)]

  def build(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.net_layers:
      if not layer.built:             # (already built when deserialised)
        layer.build(shape)
      shape = tuple(layer.compute_output_shape(shape))

  def call(self, x, training=None):
    for layer in self.net_layers:
      if isinstance(layer, _SpectralNormBase):
        x = layer(x, training=training)
      else:
        x = layer(x)
    return x

  def compute_output_shape(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.net_layers:
      shape = tuple(layer.compute_output_shape(shape))
    return shape

  def parametric(self, training=False):
    """`g` as a pure function of explicit tensors: `(fn, params)` with `fn(x, params) = g(x)`.

    `params` are the values `call` would use now: each spectral-norm layer's normalised
    kernel `W / max(1, sigma / c)` (its power iteration run here, with the training
    write-back when `training`) and bias, each LipSwish's `beta`; gradients reach the raw
    weights through them. A residual block's Neumann log-det gradient differentiates `fn`
    in `params` only (`bijectors.ResidualBlock(g_params=...)`), so the spectral
    normalisation is differentiated once, not in every pass of the estimator; repeated
    evaluations (the fixed-point inverse, the exact log-det) run the power iteration once.
    Each step computes in its layer's compute dtype, as the Keras call would.
    """
    steps, params = [], []
    for layer in self.net_layers:
      if isinstance(layer, _SpectralNormBase):
        values = [layer.normalized_kernel(training=training)]
        if layer.bias is not None:
          values.append(tf.convert_to_tensor(layer.bias.value))
        step = functools.partial(_apply_spectral, layer)
      elif isinstance(layer, LipSwish):
        values = [layer.beta]
        step = functools.partial(_apply_lipswish, layer)
      else:
        values = []
        step = functools.partial(_apply_layer, layer)
      steps.append((step, len(params), len(params) + len(values)))
      params.extend(values)

    def fn(x, params):
      for step, start, stop in steps:
        x = step(params[start:stop], x)
      return x

    return fn, tuple(params)

  def lipschitz_bound(self, n_iterations=None):
    """Product of the normalised spectral norms (`<= coeff ** num_spectral_layers`)."""
    bound = tf.ones([], tf.float32)
    for layer in self.spectral_layers:
      bound = bound * tf.cast(layer.spectral_norm(n_iterations), tf.float32)
    return bound

  def update_vectors(self, n_iterations):
    """Power-iteration warm-up of every spectral-norm layer (see `update_vectors`)."""
    for layer in self.spectral_layers:
      layer.update_vectors(n_iterations)

  def get_config(self):
    config = super().get_config()
    config.update(layers=[keras.saving.serialize_keras_object(l) for l in self.net_layers])
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["layers"] = [keras.saving.deserialize_keras_object(l) for l in config["layers"]]
    return cls(**config)


def _compute(layer, x):
  """`x` in `layer`'s compute dtype (Keras' autocast of a floating input)."""
  dtype = tf.as_dtype(layer.compute_dtype)
  return tf.cast(x, dtype) if x.dtype.is_floating and x.dtype != dtype else x


def _apply_spectral(layer, params, x):
  x = _compute(layer, x)
  y = layer._apply(x, tf.cast(params[0], x.dtype))  # pylint: disable=protected-access
  return y + tf.cast(params[1], y.dtype) if len(params) > 1 else y


def _apply_lipswish(layer, params, x):
  x = _compute(layer, x)
  beta = tf.cast(params[0], x.dtype)
  return x * tf.sigmoid(beta * x) / 1.1


def _apply_layer(layer, params, x):
  del params
  return layer(x)


def _widths(hidden):
  hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
  if any(int(h) != h or h < 1 for h in hidden):
    raise ValueError(f"hidden widths must be ints >= 1, got {hidden!r}")
  return hidden


def lipschitz_mlp(out_dim, hidden=(64, 64), *, activation="lipswish", coeff=0.98,
                  n_iterations=1, eval_iterations=20, zero_init_last=True, preactivation=True,
                  name=None):
  """`g: [N, d] -> [N, out_dim]`, `Lip(g) <= coeff ** (len(hidden) + 1)`.

  With `preactivation` (default): act -> Dense -> act -> Dense -> act -> Dense, the
  architecture of normflows' `LipschitzMLP([d, *hidden, out_dim], lipschitz_const=coeff)`
  and of Residual Flows' toy `build_nnet` (an activation before every linear layer).
  Without: Dense -> act -> Dense -> act -> Dense. `zero_init_last` zero-initialises the last
  layer so that `x + g(x)` starts as the identity (normflows divides it by 1000 instead).
  """
  hidden = _widths(hidden)
  if activation not in _ACTIVATIONS:
    lipschitz_activation(activation)   # raises the one-line ValueError
  widths = hidden + (int(out_dim),)
  layers = []
  for i, width in enumerate(widths):
    last = i == len(widths) - 1
    if preactivation or i > 0:
      layers.append(lipschitz_activation(activation))
    layers.append(SpectralNormDense(width, coeff=coeff, n_iterations=n_iterations,
                                    eval_iterations=eval_iterations,
                                    zero_init=zero_init_last and last))
  return LipschitzNetwork(layers, name=name)


def lipschitz_conv_net(out_channels, hidden=512, *, activation="lipswish", coeff=0.98,
                       kernel_sizes=(3, 1, 3), preactivation=True, n_iterations=1,
                       eval_iterations=20, zero_init_last=True, name=None):
  """`g: [B, H, W, C] -> [B, H, W, out_channels]`, `Lip(g) <= coeff ** len(kernel_sizes)`.

  Residual Flows' image block (`kernel_sizes` "3-1-3", `hidden` 512): with `preactivation`
  act -> conv3x3 -> act -> conv1x1 -> act -> conv3x3, "same" padding; Residual Flows drops
  the first activation in the first block of a model (`preactivation=False`). normflows'
  `LipschitzCNN([C, hidden, hidden, C], [3, 1, 3])` is the `preactivation=True` case.
  """
  kernel_sizes = tuple(kernel_sizes)
  if not kernel_sizes:
    raise ValueError("kernel_sizes must not be empty")
  if activation not in _ACTIVATIONS:
    lipschitz_activation(activation)
  hidden = int(hidden)
  layers = []
  for i, k in enumerate(kernel_sizes):
    last = i == len(kernel_sizes) - 1
    if preactivation or i > 0:
      layers.append(lipschitz_activation(activation))
    layers.append(SpectralNormConv2D(int(out_channels) if last else hidden, k, coeff=coeff,
                                     n_iterations=n_iterations, eval_iterations=eval_iterations,
                                     zero_init=zero_init_last and last))
  return LipschitzNetwork(layers, name=name)
