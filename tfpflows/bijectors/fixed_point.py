r"""Inverse of a residual block `z = y + g(y)`, `Lip(g) < 1`, by fixed-point iteration.

.. math::
    y_0 = z - g(z), \qquad y_{k+1} = z - g(y_k)

Banach's theorem: the map `y -> z - g(y)` is a contraction with constant `L = Lip(g)`, so
the iteration converges to the unique solution, the error shrinking like `L^k`. It stops
when every entry satisfies `|y_{k+1} - y_k| <= atol + rtol |y_{k+1}|`, or after
`max_iterations`; the loop is a bounded `tf.while_loop` (runs under `tf.function` and XLA).

The number of iterations and the final step size (which bounds the residual
`|y + g(y) - z|` of the returned point by `L` times itself) are returned. A solve that did not
converge is never silent: `fixed_point_solve` reports it, and `FixedPointInverse.on_failure`
says whether the bijector raises (`"raise"`, the default: an `InvalidArgumentError` naming the
residual; under XLA, where assertions are compiled out, the entries come back NaN) or
returns NaN for the examples that did not converge (`"nan"`).

Reference: Behrmann et al., "Invertible Residual Networks", ICML 2019, Algorithm 1.
"""

import dataclasses

import tensorflow as tf

__all__ = ["FixedPointInverse", "fixed_point_solve"]


@dataclasses.dataclass(frozen=True)
class FixedPointInverse:
  """Settings of the fixed-point inverse; see the module docstring."""
  atol: float = 1e-5
  rtol: float = 1e-5
  max_iterations: int = 200
  on_failure: str = "raise"

  def __post_init__(self):
    if self.atol < 0 or self.rtol < 0 or (self.atol == 0 and self.rtol == 0):
      raise ValueError(f"FixedPointInverse: need atol, rtol >= 0, not both 0; got "
                       f"{self.atol}, {self.rtol}")
    if int(self.max_iterations) < 1:
      raise ValueError(f"FixedPointInverse: max_iterations must be >= 1, got "
                       f"{self.max_iterations}")
    if self.on_failure not in ("raise", "nan"):
      raise ValueError(f"FixedPointInverse: on_failure must be 'raise' or 'nan', got "
                       f"{self.on_failure!r}")


def fixed_point_solve(g, z, config, event_ndims):
  """Solves `y + g(y) = z` for a batch `z` `[B, *event]`.

  Returns:
    `(y, iterations, residual, converged)`: `y` like `z`; `iterations` int32 scalar;
    `residual` the largest `|y_k - y_{k-1}|` of the last step, per example `[B]`;
    `converged` bool `[B]`. Examples that did not converge are NaN in `y`.
  """
  axes = list(range(-event_ndims, 0))
  atol, rtol = tf.cast(config.atol, z.dtype), tf.cast(config.rtol, z.dtype)

  def step(y):
    y_next = z - g(y)
    diff = tf.abs(y_next - y)
    ok = tf.reduce_all(diff <= atol + rtol * tf.abs(y_next), axis=axes)
    return y_next, tf.reduce_max(diff, axis=axes), ok

  def body(k, y, residual, converged):
    del residual, converged
    y, residual, converged = step(y)
    return k + 1, y, residual, converged

  y0, residual0, converged0 = step(z)
  iterations, y, residual, converged = tf.while_loop(
      lambda k, y, r, c: tf.logical_not(tf.reduce_all(c)), body,
      (tf.constant(1), y0, residual0, converged0),
      maximum_iterations=int(config.max_iterations) - 1)
  mask = tf.reshape(converged, tf.concat([tf.shape(converged), [1] * event_ndims], 0))
  y = tf.where(mask, y, tf.constant(float("nan"), z.dtype))
  return y, iterations, residual, converged


def report_failure(converged, residual, iterations, config):
  """An assertion op that fails (one line) when some example did not converge."""
  return tf.debugging.Assert(
      tf.reduce_all(converged),
      ["fixed-point inverse did not converge: largest residual", tf.reduce_max(residual),
       "after", iterations, "iterations (atol", config.atol, "rtol", config.rtol,
       "); is Lip(g) < 1?"], summarize=1)
