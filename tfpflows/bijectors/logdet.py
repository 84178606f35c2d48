r"""Log-determinant estimators for residual blocks `F(x) = x + g(x)` with `Lip(g) < 1`.

.. math::
    \log\det(I + J_g(x)) = \sum_{k=1}^{\infty} \frac{(-1)^{k+1}}{k} \operatorname{tr}(J_g^k)
    \approx \sum_{k=1}^{n} \frac{(-1)^{k+1}}{k}\, \frac{v^\top J_g^k v}{P(N \ge k)},
    \qquad v \sim N(0, I) \text{ or Rademacher}

(the power series converges because `||J_g|| <= Lip(g) < 1`; Hutchinson's estimator
`tr(A) = E[v^T A v]`). `J_g^k`-products are vector-Jacobian products of one evaluation of
`g`: `w_k^T = w_{k-1}^T J_g`, `w_0 = v`.

Methods (`LogDetEstimator.method`):

* `"exact"`: `log|det(I + J_g)|` from the full Jacobian (`batch_jacobian`, then QR, which
  XLA compiles, unlike `slogdet`). Costs `D` backward passes: small dimensions and tests.
* `"series"`: the first `n_terms` terms with coefficient 1 (i-ResNet, Behrmann et al. 2019).
  Biased: the tail is dropped, which matters when `Lip(g)` is near 1.
* `"roulette"`: Russian roulette (Residual Flows, Chen et al. 2019): `n = n_terms + N` terms,
  `N ~ Geometric(p)` on `{1, 2, ...}` drawn in the graph from a stateless seed, term `k`
  weighted by `1 / P(n >= k)`; unbiased. `N` is capped at `max_terms` so that the loop is
  bounded; the cap's bias is below `(1 - p) ** max_terms` times the largest term.

Gradients (`neumann_gradient`):

* False: plain backpropagation through the estimator; the training step's memory grows
  with the number of terms.
* True: the Neumann-series gradient of Residual Flows,

  .. math::
      \frac{\partial}{\partial\theta}\log\det(I + J_g)
      = \operatorname{tr}\Big((I + J_g)^{-1}\frac{\partial J_g}{\partial\theta}\Big)
      \approx \sum_{k=0}^{n} \frac{(-1)^k}{P(n \ge k)}\,
      v^\top J_g^k \frac{\partial J_g}{\partial\theta} v,

  computed *in the forward pass* ("backward-in-forward", `tf.custom_gradient`) from the same
  vector-Jacobian products, so nothing of the series is kept for the backward pass: the
  memory of a training step does not grow with the number of terms. The value returned is
  still the log-det estimate above (a real log-likelihood), not the gradient surrogate.
  The parameter gradient assumes the upstream gradient is the same for every example of
  the batch (a mean or sum of log-probabilities, as `fit` uses); the gradient with respect
  to the input is exact per example.

References:
  Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual Networks", ICML 2019.
  Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible Generative
  Modeling", NeurIPS 2019.
"""

import dataclasses

import tensorflow as tf

__all__ = ["LogDetEstimator", "residual_log_det"]

METHODS = ("exact", "series", "roulette")
PROBES = ("gaussian", "rademacher")


@dataclasses.dataclass(frozen=True)
class LogDetEstimator:
  """How a residual block estimates `log det(I + J_g)`; see the module docstring.

  Attributes:
    method: `"exact"`, `"series"` (truncated power series, biased) or `"roulette"`
      (Russian roulette, unbiased).
    n_terms: series: the number of terms; roulette: the terms always computed before the
      random tail.
    p: roulette: parameter of the geometric tail length `N`, `P(N >= j) = (1 - p)^(j-1)`.
    max_terms: roulette: cap on `N` (keeps the loop bounded).
    probe: `"gaussian"` or `"rademacher"` Hutchinson probe vectors.
    num_probes: probes averaged per example.
    neumann_gradient: the memory-efficient Neumann gradient, computed in the forward pass.
  """
  method: str = "roulette"
  n_terms: int = 2
  p: float = 0.5
  max_terms: int = 64
  probe: str = "gaussian"
  num_probes: int = 1
  neumann_gradient: bool = True

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"LogDetEstimator: method must be one of {METHODS}, got {self.method!r}")
    if self.probe not in PROBES:
      raise ValueError(f"LogDetEstimator: probe must be one of {PROBES}, got {self.probe!r}")
    if int(self.n_terms) < (1 if self.method == "series" else 0):
      raise ValueError(f"LogDetEstimator: n_terms must be >= 1 for series and >= 0 for "
                       f"roulette, got {self.n_terms}")
    if not 0. < float(self.p) < 1.:
      raise ValueError(f"LogDetEstimator: p must be in (0, 1), got {self.p}")
    if int(self.max_terms) < 1 or int(self.num_probes) < 1:
      raise ValueError(f"LogDetEstimator: max_terms and num_probes must be >= 1, got "
                       f"{self.max_terms} and {self.num_probes}")

  @property
  def stochastic(self):
    return self.method != "exact"

  # -- the settings of the papers -------------------------------------------------------

  @classmethod
  def exact(cls):
    return cls(method="exact", neumann_gradient=False)

  @classmethod
  def iresnet(cls, n_terms=5):
    """i-ResNet training: truncated series, backpropagated (biased)."""
    return cls(method="series", n_terms=n_terms, neumann_gradient=False)

  @classmethod
  def resflow(cls, n_terms=2, p=0.5):
    """Residual Flows training: roulette with `n_terms` exact terms, Neumann gradient."""
    return cls(method="roulette", n_terms=n_terms, p=p, neumann_gradient=True)

  @classmethod
  def low_variance(cls, n_terms=20, num_probes=4, p=0.5):
    """Evaluation: unbiased roulette after 20 exact terms, several probes, no gradient."""
    return cls(method="roulette", n_terms=n_terms, p=p, num_probes=num_probes,
               neumann_gradient=False)

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def _event_axes(event_ndims):
  return list(range(-event_ndims, 0))


def _log_abs_det(matrix):
  """log|det A| of a batch of square matrices by QR (XLA compiles it; slogdet it does not)."""
  r = tf.linalg.qr(matrix)[1]
  return tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r))), axis=-1)


def _exact(g, x, event_ndims):
  """g(x) and log|det(I + J_g(x))| from the full Jacobian (D vector-Jacobian products).

  Each example is repeated D times and the rows of `J_g` are the products with the unit
  vectors, all in one backward pass; plain differentiable ops, so it trains too.
  """
  d = x.shape[-event_ndims:].num_elements()
  if d is None:
    raise ValueError("LogDetEstimator('exact'): the event shape must be known statically")
  batch = tf.shape(x)[0]
  xs = tf.repeat(x, d, axis=0)                                    # [B * D, *event]
  eye = tf.reshape(tf.eye(d, dtype=x.dtype), [d] + x.shape[-event_ndims:].as_list())
  units = tf.tile(eye, [batch] + [1] * event_ndims)
  with tf.GradientTape() as tape:
    tape.watch(xs)
    gxs = g(xs)
  rows = tape.gradient(gxs, xs, output_gradients=units)           # e_i^T J_g
  jac = tf.reshape(rows, tf.stack([batch, d, d]))
  gx = tf.reshape(gxs, tf.concat([[batch, d], tf.shape(x)[1:]], 0))[:, 0]
  return gx, _log_abs_det(tf.eye(d, dtype=x.dtype) + jac)


def _num_terms(est, seed):
  """Total terms `n` (int32 scalar) and the weight `1 / P(n >= k)` as a function of `k`."""
  if est.method == "series":
    return tf.constant(int(est.n_terms)), lambda k, dtype: tf.ones([], dtype)
  u = tf.random.stateless_uniform([], seed, minval=1e-12, maxval=1., dtype=tf.float64,
                                    alg="philox")
  tail = 1. + tf.math.floor(tf.math.log(u) / tf.math.log1p(tf.constant(-float(est.p), tf.float64)))
  tail = tf.cast(tf.minimum(tail, float(est.max_terms)), tf.int32)
  offset = int(est.n_terms)

  def weight(k, dtype):
    extra = tf.cast(tf.maximum(k - offset - 1, 0), dtype)
    return tf.pow(tf.cast(1. - est.p, dtype), -extra)

  return offset + tail, weight


def _probes(est, shape, dtype, seed):
  if est.probe == "gaussian":
    return tf.random.stateless_normal(shape, seed, dtype=dtype, alg="philox")
  bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32,
                                      alg="philox")
  return tf.cast(2 * bits - 1, dtype)


def _series(vjp, v, num_terms, weight, max_iterations, *, neumann):
  """Runs the power series: returns (log-det per row, Neumann vector or None)."""
  dtype = v.dtype
  axes = list(range(1, v.shape.rank))

  def body(k, w, logdet, neumann_vec):
    w = vjp(w)                                        # w_k^T = v^T J^k
    kf = tf.cast(k, dtype)
    sign = 1. - 2. * tf.cast(k % 2 == 0, dtype)       # (-1)^(k+1)
    c = weight(k, dtype)
    logdet += sign * c / kf * tf.reduce_sum(w * v, axis=axes)
    if neumann:
      neumann_vec -= sign * c * w                     # (-1)^k c_k w_k
    return k + 1, w, logdet, neumann_vec

  init = (tf.constant(1), v, tf.zeros(tf.shape(v)[:1], dtype), v if neumann else tf.zeros([]))
  _, _, logdet, neumann_vec = tf.while_loop(
      lambda k, *_: k <= num_terms, body, init, maximum_iterations=max_iterations)
  return logdet, (neumann_vec if neumann else None)


def residual_log_det(g, x, estimator, seed, event_ndims, params=None):
  """Returns `(g(x), log det(I + J_g(x)) estimate [batch], number of series terms used)`.

  Args:
    g: callable on `[B, *event]` batches, `g(x)`; or, with `params`, `g(x, params)`.
    x: `[B, *event]` float tensor.
    estimator: a `LogDetEstimator`.
    seed: stateless seed, int32 `[2]` (ignored by `"exact"`).
    event_ndims: rank of one event.
    params: optional tuple of tensors, `g`'s parameters as explicit inputs. The Neumann
      gradient then differentiates `g` with respect to them, and gradients reach whatever
      made them (spectral normalisation, variables) by ordinary backpropagation, once:
      the same gradient as a `g` that reads its variables itself, from a smaller graph.
  """
  est = estimator
  if params is not None:
    params = tuple(params)
    plain = lambda x: g(x, params)
  else:
    plain = g
  if est.method == "exact":
    gx, logdet = _exact(plain, x, event_ndims)
    return gx, logdet, tf.constant(0)
  probe_seed, n_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  num_terms, weight = _num_terms(est, n_seed)
  max_iterations = int(est.n_terms) + (int(est.max_terms) if est.method == "roulette" else 0)
  batch = tf.shape(x)[0]
  probes = int(est.num_probes)
  # Several probes per example: evaluate g on `probes` stacked copies of the batch.
  xs = x if probes == 1 else tf.tile(x, [probes] + [1] * event_ndims)
  v = _probes(est, tf.shape(xs), x.dtype, probe_seed)

  def average(per_row):
    return per_row if probes == 1 else tf.reduce_mean(tf.reshape(per_row, [probes, batch]), 0)

  if not est.neumann_gradient:
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(xs)
      gxs = plain(xs)
    vjp = lambda w: tape.gradient(gxs, xs, output_gradients=w)
    logdet, _ = _series(vjp, v, num_terms, weight, max_iterations, neumann=False)
    return gxs[:batch] if probes > 1 else gxs, average(logdet), num_terms
  gxs, logdet = _neumann_log_det(g, xs, v, num_terms, weight, max_iterations, params)
  return gxs[:batch] if probes > 1 else gxs, average(logdet), num_terms


def _neumann_log_det(g, x, v, num_terms, weight, max_iterations, params=None):
  """(g(x), log-det estimate) whose gradient is the Neumann estimator, computed now.

  With `params`, `g(x, params)` and the parameter gradients are returned for `params`
  (explicit inputs of the custom gradient); variables `g` reads itself get theirs too.
  """
  axes = list(range(1, x.shape.rank))
  explicit = params is not None
  params = tuple(params) if explicit else ()
  n_params = len(params)

  @tf.custom_gradient
  def estimate(x, *params):
    call = (lambda x: g(x, params)) if explicit else g
    with tf.GradientTape() as outer:
      outer.watch(x)
      outer.watch(params)
      with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        tape.watch(params)
        gx = call(x)
      with outer.stop_recording():
        vjp = lambda w: tape.gradient(gx, x, output_gradients=w)
        logdet, neumann_vec = _series(vjp, v, num_terms, weight, max_iterations, neumann=True)
        neumann_vec = tf.stop_gradient(neumann_vec)
      # Surrogate whose gradient is the Neumann estimator: (sum_k (-1)^k c_k v^T J^k) J v.
      surrogate = tf.reduce_sum(tape.gradient(gx, x, output_gradients=neumann_vec) * v)
    watched = [w for w in outer.watched_variables() if w.trainable]
    grads = outer.gradient(surrogate, [x, *params] + watched,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grad_x, grad_params = grads[0], grads[1:1 + n_params]
    var_grads = {w.ref(): d for w, d in zip(watched, grads[1 + n_params:])}

    def grad_fn(d_gx, d_logdet, variables=None):
      variables = list(variables or [])
      if d_gx is None:
        d_gx = tf.zeros_like(gx)
      back = tape.gradient(gx, [x, *params] + variables, output_gradients=d_gx,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
      d_logdet = tf.zeros(tf.shape(x)[:1], x.dtype) if d_logdet is None else d_logdet
      per_example = tf.reshape(d_logdet, [-1] + [1] * len(axes))
      dx = back[0] + per_example * grad_x
      scale = tf.reduce_mean(d_logdet)  # the upstream gradient, uniform over the batch
      dparams = [d + tf.cast(scale, d.dtype) * tf.cast(extra, d.dtype)
                 for d, extra in zip(back[1:1 + n_params], grad_params)]
      dvars = []
      for var, d in zip(variables, back[1 + n_params:]):
        extra = var_grads.get(var.ref())
        dvars.append(d if extra is None else d + scale * tf.cast(extra, d.dtype))
      return [dx, *dparams], dvars

    return (gx, logdet), grad_fn

  return estimate(x, *params)
