"""Checks shared by the bijector tests.

TFP's `bijector_test_util` is not shipped in the `tensorflow-probability` wheel, so
`assert_bijective_and_finite` here checks the same contract as TFP's helper of that name:
finite outputs in both directions, both round trips, finite log-dets, and
`fldj(x) = -ildj(forward(x))`, `ildj(y) = -fldj(inverse(y))`.
"""

import numpy as np
import tensorflow as tf


def break_cache(t):
  """A tensor equal to `t` that TFP's bijector cache has never seen."""
  return tf.identity(t)


def assert_bijective_and_finite(bijector, x, y, event_ndims, *, atol=1e-5, rtol=1e-5):
  x, y = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
  f_x = bijector.forward(x)
  g_y = bijector.inverse(y)
  for name, t in (("forward(x)", f_x), ("inverse(y)", g_y)):
    assert np.all(np.isfinite(t.numpy())), f"{name} is not finite"
  np.testing.assert_allclose(bijector.inverse(break_cache(f_x)).numpy(), x.numpy(),
                             atol=atol, rtol=rtol, err_msg="inverse(forward(x)) != x")
  np.testing.assert_allclose(bijector.forward(break_cache(g_y)).numpy(), y.numpy(),
                             atol=atol, rtol=rtol, err_msg="forward(inverse(y)) != y")
  fldj_x = bijector.forward_log_det_jacobian(x, event_ndims=event_ndims)
  ildj_y = bijector.inverse_log_det_jacobian(y, event_ndims=event_ndims)
  assert np.all(np.isfinite(fldj_x.numpy())) and np.all(np.isfinite(ildj_y.numpy()))
  ildj_fx = bijector.inverse_log_det_jacobian(break_cache(f_x), event_ndims=event_ndims)
  fldj_gy = bijector.forward_log_det_jacobian(break_cache(g_y), event_ndims=event_ndims)
  np.testing.assert_allclose(*np.broadcast_arrays(fldj_x.numpy(), -ildj_fx.numpy()),
                             atol=atol * 10, rtol=rtol, err_msg="fldj(x) != -ildj(f(x))")
  np.testing.assert_allclose(*np.broadcast_arrays(ildj_y.numpy(), -fldj_gy.numpy()),
                             atol=atol * 10, rtol=rtol, err_msg="ildj(y) != -fldj(g(y))")


def brute_force_fldj(bijector, x, event_ndims):
  """log|det d forward / d x| per batch member, from the full Jacobian (float64)."""
  batch = x.shape[0]
  event_shape = x.shape[1:]
  flat = tf.reshape(x, [batch, -1])
  with tf.GradientTape() as tape:
    tape.watch(flat)
    y = bijector.forward(tf.reshape(flat, [batch, *event_shape]))
    y_flat = tf.reshape(y, [batch, -1])
  jac = tape.batch_jacobian(y_flat, flat)
  _, logdet = tf.linalg.slogdet(jac)
  del event_ndims
  return logdet
