"""2D toy densities of FFJORD, sampled in TensorFlow with stateless random ops.

Each density is written as a sampling formula, with `u ~ U[0, 1)`, `e ~ N(0, I)` and
`k ~ Categorical` drawn by `tf.random.stateless_*` from a `[2]` integer seed, so a seed fixes
the sample exactly, on any device and inside `tf.data`, and no numpy randomness is involved.

Reference: Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, "FFJORD: Free-form Continuous
Dynamics for Scalable Reversible Generative Models", ICLR 2019 (`lib/toy_data.py`). The
formulas follow that file, with two deliberate changes: points are drawn one by one
(FFJORD uses equal counts per mode and `linspace` angles in a batch), so each batch is an
i.i.d. sample of one continuous density; and the checkerboard is not scaled by 2, so it is
exactly uniform on 8 unit squares with entropy `log 8`.

`toy_log_prob(name, x)` is the exact log-density of four of them (moons, eight_gaussians,
checkerboard, rings), so a model's KL from the data, `E[log p(x) - log q(x)]`, can be
estimated on test points without knowing the entropy.
"""

import math

import tensorflow as tf

TOY_NAMES = ("moons", "eight_gaussians", "checkerboard", "rings", "pinwheel", "two_spirals")


def _seeds(seed, num):
  return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def _uniform(shape, seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval)


def _normal(shape, seed, stddev=1.0):
  return tf.random.stateless_normal(shape, seed=seed, stddev=stddev)


def _categorical(n, num_classes, seed):
  return tf.random.stateless_uniform([n], seed=seed, minval=0, maxval=num_classes,
                                     dtype=tf.int32)


def _moons(n, seed):
  """`t ~ U[0, pi)`; upper moon `(cos t, sin t)`, lower moon `(1 - cos t, 1/2 - sin t)`,
  each with probability 1/2; `x = 2 (moon + 0.1 e) + (-1, -0.2)`."""
  s_t, s_k, s_e = _seeds(seed, 3)
  t = _uniform([n], s_t, maxval=math.pi)
  lower = tf.cast(_categorical(n, 2, s_k), tf.float32)
  mx = (1.0 - lower) * tf.cos(t) + lower * (1.0 - tf.cos(t))
  my = (1.0 - lower) * tf.sin(t) + lower * (0.5 - tf.sin(t))
  moon = tf.stack([mx, my], axis=-1) + _normal([n, 2], s_e, stddev=0.1)
  return 2.0 * moon + tf.constant([-1.0, -0.2])


def _eight_gaussians(n, seed):
  """`k ~ U{0..7}`, `x = (4 (cos(k pi/4), sin(k pi/4)) + 0.5 e) / 1.414`."""
  s_k, s_e = _seeds(seed, 2)
  angle = tf.cast(_categorical(n, 8, s_k), tf.float32) * (math.pi / 4.0)
  centers = 4.0 * tf.stack([tf.cos(angle), tf.sin(angle)], axis=-1)
  return (centers + _normal([n, 2], s_e, stddev=0.5)) / 1.414


def _checkerboard(n, seed):
  """`x1 ~ U[-2, 2)`, `x2 = u - 2 b + (floor(x1) mod 2)` with `b ~ Bernoulli(1/2)`.

  Exactly uniform on the 8 unit squares `[i, i+1) x [j, j+1)` of `[-2, 2)^2` with `i + j`
  even, density 1/8 there: entropy `log 8`.
  """
  s_x1, s_u, s_b = _seeds(seed, 3)
  x1 = _uniform([n], s_x1, minval=-2.0, maxval=2.0)
  b = tf.cast(_categorical(n, 2, s_b), tf.float32)
  x2 = _uniform([n], s_u) - 2.0 * b + tf.math.floormod(tf.floor(x1), 2.0)
  return tf.stack([x1, x2], axis=-1)


def _rings(n, seed):
  """`r ~ U{3, 2.25, 1.5, 0.75}`, `t ~ U[0, 2 pi)`, `x = r (cos t, sin t) + 0.08 e`."""
  s_r, s_t, s_e = _seeds(seed, 3)
  radius = 3.0 * (1.0 - 0.25 * tf.cast(_categorical(n, 4, s_r), tf.float32))
  t = _uniform([n], s_t, maxval=2.0 * math.pi)
  ring = radius[:, None] * tf.stack([tf.cos(t), tf.sin(t)], axis=-1)
  return ring + _normal([n, 2], s_e, stddev=0.08)


def _pinwheel(n, seed):
  """5 arms: `k ~ U{0..4}`, `f = (1 + 0.3 e1, 0.1 e2)`, `a = 2 pi k / 5 + 0.25 exp(f1)`,
  `x = 2 (f1 cos a + f2 sin a, f2 cos a - f1 sin a)`."""
  s_k, s_e = _seeds(seed, 2)
  f = _normal([n, 2], s_e) * tf.constant([0.3, 0.1]) + tf.constant([1.0, 0.0])
  k = tf.cast(_categorical(n, 5, s_k), tf.float32)
  a = 2.0 * math.pi * k / 5.0 + 0.25 * tf.exp(f[:, 0])
  c, s = tf.cos(a), tf.sin(a)
  return 2.0 * tf.stack([f[:, 0] * c + f[:, 1] * s, f[:, 1] * c - f[:, 0] * s], axis=-1)


def _two_spirals(n, seed):
  """`t = 3 pi sqrt(u)`, `x = s (-t cos t + u1/2, t sin t + u2/2) / 3 + 0.1 e`, `s = +-1`."""
  s_t, s_jitter, s_sign, s_e = _seeds(seed, 4)
  t = 3.0 * math.pi * tf.sqrt(_uniform([n], s_t))
  jitter = 0.5 * _uniform([n, 2], s_jitter)
  arm = tf.stack([-tf.cos(t) * t, tf.sin(t) * t], axis=-1) + jitter
  sign = 1.0 - 2.0 * tf.cast(_categorical(n, 2, s_sign), tf.float32)
  return sign[:, None] * arm / 3.0 + _normal([n, 2], s_e, stddev=0.1)


_SAMPLERS = {
    "moons": _moons,
    "eight_gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "pinwheel": _pinwheel,
    "two_spirals": _two_spirals,
}
assert tuple(_SAMPLERS) == TOY_NAMES


def _check_name(name):
  if name not in _SAMPLERS:
    raise ValueError(f"unknown toy density {name!r}; expected one of {', '.join(TOY_NAMES)}")


def _seed_pair(seed):
  """An int `s` becomes the stateless seed `(s, 0)`; a `[2]` integer tensor is used as is."""
  if isinstance(seed, int):
    return tf.constant([seed, 0], tf.int64)
  seed = tf.convert_to_tensor(seed)
  if seed.shape != (2,) or not seed.dtype.is_integer:
    raise ValueError(f"seed must be an int or a [2] integer tensor; got {seed!r}")
  return tf.cast(seed, tf.int64)


def toy_sample(name, n, *, seed=0):
  """Draws `n` points of the toy density `name`: float32 `[n, 2]`.

  Args:
    name: one of `TOY_NAMES`.
    n: number of points (a Python int or scalar int tensor).
    seed: an int `s` (stateless seed `(s, 0)`) or a `[2]` integer tensor. Equal seeds give
      equal samples.

  Raises:
    ValueError: unknown `name`.
  """
  _check_name(name)
  return tf.cast(_SAMPLERS[name](n, _seed_pair(seed)), tf.float32)


_MOONS_NODES = 1024   # midpoint-rule nodes in t for the moons' curve integral


def _log_normal_2d(sq_dist, stddev):
  return -sq_dist / (2.0 * stddev ** 2) - math.log(2.0 * math.pi * stddev ** 2)


def _moons_log_prob(x):
  """`p(x) = 1/2 sum_moon (1/pi) int_0^pi N(x; c_moon(t), 0.2^2 I) dt` with the curves
  `c_upper(t) = 2 (cos t, sin t) + (-1, -0.2)`, `c_lower(t) = 2 (1 - cos t, 1/2 - sin t) +
  (-1, -0.2)`: the midpoint rule on `_MOONS_NODES` nodes (spacing 0.003 rad against the
  kernel's width in t of 0.1 rad: error far below float32 round-off)."""
  t = (tf.range(_MOONS_NODES, dtype=x.dtype) + 0.5) * (math.pi / _MOONS_NODES)
  upper = tf.stack([2.0 * tf.cos(t) - 1.0, 2.0 * tf.sin(t) - 0.2], axis=-1)
  lower = tf.stack([2.0 * (1.0 - tf.cos(t)) - 1.0, 2.0 * (0.5 - tf.sin(t)) - 0.2], axis=-1)
  curve = tf.concat([upper, lower], axis=0)                             # [2M, 2]
  sq = tf.reduce_sum(tf.square(x[..., None, :] - curve), axis=-1)       # [..., 2M]
  return (tf.reduce_logsumexp(_log_normal_2d(sq, 0.2), axis=-1)
          - math.log(2.0 * _MOONS_NODES))


def _eight_gaussians_log_prob(x):
  """`p(x) = 1/8 sum_k N(x; 4 (cos(k pi/4), sin(k pi/4)) / 1.414, (0.5 / 1.414)^2 I)`."""
  angle = tf.range(8, dtype=x.dtype) * (math.pi / 4.0)
  centers = 4.0 * tf.stack([tf.cos(angle), tf.sin(angle)], axis=-1) / 1.414
  sq = tf.reduce_sum(tf.square(x[..., None, :] - centers), axis=-1)
  return tf.reduce_logsumexp(_log_normal_2d(sq, 0.5 / 1.414), axis=-1) - math.log(8.0)


def _checkerboard_log_prob(x):
  """`log(1/8)` on the 8 squares `[i, i+1) x [j, j+1)` of `[-2, 2)^2` with `i + j` even,
  `-inf` elsewhere (NaN where `x` has a NaN, as the other densities give)."""
  inside = tf.reduce_all((x >= -2.0) & (x < 2.0), axis=-1)
  even = tf.equal(tf.math.floormod(tf.reduce_sum(tf.floor(x), axis=-1), 2.0), 0.0)
  log_p = tf.where(inside & even, tf.constant(-math.log(8.0), x.dtype),
                   tf.constant(-math.inf, x.dtype))
  return tf.where(tf.reduce_any(tf.math.is_nan(x), axis=-1), tf.constant(math.nan, x.dtype),
                  log_p)


def _rings_log_prob(x):
  """`p(x) = 1/4 sum_r (1 / (2 pi s^2)) exp(-(rho^2 + r^2) / (2 s^2)) I_0(rho r / s^2)`,
  `rho = |x|`, `s = 0.08`: the isotropic Gaussian averaged over the ring's angle (a Rice
  density in `rho`); `I_0` through TF's exponentially scaled `bessel_i0e`."""
  s = 0.08
  radii = tf.constant([3.0, 2.25, 1.5, 0.75], x.dtype)
  rho = tf.norm(x, axis=-1)[..., None]
  z = rho * radii / s ** 2
  log_ring = (-tf.square(rho - radii) / (2.0 * s ** 2) - math.log(2.0 * math.pi * s ** 2)
              + tf.math.log(tf.math.special.bessel_i0e(z)))
  return tf.reduce_logsumexp(log_ring, axis=-1) - math.log(4.0)


_LOG_PROBS = {
    "moons": _moons_log_prob,
    "eight_gaussians": _eight_gaussians_log_prob,
    "checkerboard": _checkerboard_log_prob,
    "rings": _rings_log_prob,
}


def toy_log_prob(name, x):
  """The exact log-density of the toy density `name` at `x` (`[..., 2]`, float32 or float64;
  the result has `x`'s dtype and batch shape).

  Known for `moons` (a 1D integral along the curves, computed to round-off, memory
  `O(n * 2048)`), `eight_gaussians`, `checkerboard` (`-inf` off its squares) and `rings`
  (closed form); `pinwheel` and `two_spirals` have no closed form here.

  Raises:
    ValueError: unknown `name`, a density without a formula here, or `x` not `[..., 2]`.
  """
  _check_name(name)
  if name not in _LOG_PROBS:
    raise ValueError(f"toy_log_prob: name must be one of {', '.join(_LOG_PROBS)} (the "
                     f"densities with a formula here); got {name!r}")
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    x = tf.cast(x, tf.float32)
  if x.shape.rank is None or x.shape.rank < 1 or x.shape[-1] != 2:
    raise ValueError(f"toy_log_prob: x must have shape [..., 2]; got {x.shape}")
  return _LOG_PROBS[name](x)


def toy_dataset(name, *, batch_size, seed=0, start_step=0):
  """Infinite `tf.data.Dataset` of fresh float32 `[batch_size, 2]` draws.

  Batch `i` is `toy_sample(name, batch_size, seed=(seed, i))`, so the stream is a pure
  function of `seed` and the batch index (`toy_sample(name, n, seed=s)` equals batch 0);
  it starts at batch `start_step`.
  """
  _check_name(name)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0; got {start_step}")
  ds = tf.data.Dataset.counter(int(start_step), dtype=tf.int64).map(
      lambda i: toy_sample(name, batch_size, seed=tf.stack([tf.constant(seed, tf.int64), i])))
  return ds.prefetch(tf.data.AUTOTUNE)
