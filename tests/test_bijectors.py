"""One table over every bijector: round trips, log-dets vs brute force, regimes, batching."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors as B
from tests import bijector_checks as checks

tfb = tfp.bijectors


# -- plain-TF conditioners with fixed random weights (any dtype) -------------------------

def dense_net(d_in, d_out, dtype, seed):
  rng = np.random.RandomState(seed)
  w1 = tf.constant(rng.randn(d_in, 8) * 0.5, dtype)
  w2 = tf.constant(rng.randn(8, d_out) * 0.3, dtype)
  return lambda x: tf.matmul(tf.tanh(tf.matmul(x, w1)), w2)


def conv_net(c_in, c_out, dtype, seed):
  rng = np.random.RandomState(seed)
  k1 = tf.constant(rng.randn(3, 3, c_in, 4) * 0.3, dtype)
  k2 = tf.constant(rng.randn(3, 3, 4, c_out) * 0.2, dtype)
  def net(x):
    h = tf.tanh(tf.nn.conv2d(x, k1, 1, "SAME"))
    return tf.nn.conv2d(h, k2, 1, "SAME")
  return net


def _rng_params(seed, *shape):
  return np.random.RandomState(seed).randn(*shape)


def _lu_params(c, dtype, seed):
  rng = np.random.RandomState(seed)
  return dict(permutation=rng.permutation(c).astype(np.int32),
              lower_upper=tf.constant(rng.randn(c, c) * 0.3, dtype),
              log_scale=tf.constant(rng.randn(c) * 0.2, dtype),
              sign=tf.constant(np.sign(rng.randn(c)), dtype))


def _coupling(event_shape, mask, transform, reverse, scale="sigmoid", clamp=3., shift="data"):
  event_ndims = len(event_shape)
  c = event_shape[-1]
  def make(dtype):
    if mask == "channel":
      n_a = c // 2 if not reverse else c - c // 2
      c_in, c_out = n_a, (c - n_a) * (2 if transform == "affine" else 1)
    else:
      c_in, c_out = c, c * (2 if transform == "affine" else 1)
    net = (conv_net(c_in, c_out, dtype, 3) if event_ndims == 3
           else dense_net(c_in, c_out, dtype, 3))
    return B.Coupling(net, mask=mask, transform=transform, reverse=reverse,
                      event_ndims=event_ndims, scale=scale, clamp=clamp, shift=shift)
  return make


def _factor_out(dtype):
  inner = B.ActNorm(tf.constant(_rng_params(5, 2), dtype), tf.constant(_rng_params(6, 2), dtype),
                    event_ndims=3)
  return B.FactorOut(inner, conv_net(2, 4, dtype, 7), event_ndims=3)


def _factor_out_vec(dtype):
  inner = B.Coupling(dense_net(1, 2, dtype, 8), event_ndims=1)
  return B.FactorOut(inner, dense_net(2, 2, dtype, 9), num_factored=1, event_ndims=1)


CASES = {
    "actnorm_vec": ((3,), lambda d: B.ActNorm(tf.constant(_rng_params(1, 3), d),
                                              tf.constant(_rng_params(2, 3), d))),
    "actnorm_img": ((4, 4, 3), lambda d: B.ActNorm(tf.constant(_rng_params(1, 3), d),
                                                   tf.constant(_rng_params(2, 3), d),
                                                   event_ndims=3)),
    "conv1x1_vec": ((3,), lambda d: B.Invertible1x1Conv(
        tf.constant(_rng_params(3, 3, 3) + 2 * np.eye(3), d), event_ndims=1)),
    "conv1x1_img": ((4, 4, 3), lambda d: B.Invertible1x1Conv(
        tf.constant(_rng_params(3, 3, 3) + 2 * np.eye(3), d), event_ndims=3)),
    "lu_conv1x1_vec": ((4,), lambda d: B.LUInvertible1x1Conv(**_lu_params(4, d, 4),
                                                              event_ndims=1)),
    "lu_conv1x1_img": ((4, 4, 4), lambda d: B.LUInvertible1x1Conv(**_lu_params(4, d, 4))),
    "squeeze": ((4, 4, 2), lambda d: B.Squeeze()),
    "unsqueeze": ((2, 2, 8), lambda d: tfb.Invert(B.Squeeze())),
    "factor_out_img": ((4, 4, 4), _factor_out),
    "factor_out_vec": ((3,), _factor_out_vec),
}
for _shape in ((5,), (4, 4, 3)):
  for _mask in ("channel", "checkerboard"):
    for _transform in ("affine", "additive"):
      for _reverse in (False, True):
        _key = (f"coupling_{_transform}_{_mask}{'_rev' if _reverse else ''}_"
                f"{'img' if len(_shape) == 3 else 'vec'}")
        CASES[_key] = (_shape, _coupling(_shape, _mask, _transform, _reverse))
    # the soft-clamped exp scale; clamp 0.5 so that the tanh saturates on these inputs
    _key = f"coupling_exp_{_mask}_{'img' if len(_shape) == 3 else 'vec'}"
    CASES[_key] = (_shape, _coupling(_shape, _mask, "affine", _mask == "channel", "exp", 0.5))
    # RealNVP's order, the shift after the scale, with either scale
    for _scale in ("exp", "sigmoid"):
      for _reverse in (False, True):
        _key = (f"coupling_latent_shift_{_scale}_{_mask}{'_rev' if _reverse else ''}_"
                f"{'img' if len(_shape) == 3 else 'vec'}")
        CASES[_key] = (_shape, _coupling(_shape, _mask, "affine", _reverse, _scale, 0.5,
                                         "latent"))

NAMES = sorted(CASES)


def _make(name, dtype):
  event_shape, factory = CASES[name]
  return factory(dtype), event_shape, len(event_shape)


def _x(event_shape, dtype, batch=3, seed=0):
  return tf.constant(np.random.RandomState(seed).randn(batch, *event_shape), dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,atol", [(tf.float32, 1e-5), (tf.float64, 1e-10)])
def test_round_trip_with_cache_broken(name, dtype, atol):
  bij, event_shape, nd = _make(name, dtype)
  x = _x(event_shape, dtype)
  y = bij.forward(x)
  np.testing.assert_allclose(bij.inverse(checks.break_cache(y)).numpy(), x.numpy(), atol=atol)
  y2 = _x(bij.forward_event_shape(event_shape), dtype, seed=1)
  x2 = bij.inverse(y2)
  np.testing.assert_allclose(bij.forward(checks.break_cache(x2)).numpy(), y2.numpy(), atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_brute_force_jacobian_float64(name):
  bij, event_shape, nd = _make(name, tf.float64)
  x = _x(event_shape, tf.float64)
  expected = checks.brute_force_fldj(bij, x, nd)
  fldj = bij.forward_log_det_jacobian(x, event_ndims=nd)
  np.testing.assert_allclose(np.broadcast_to(fldj.numpy(), expected.shape), expected.numpy(),
                             atol=1e-9)
  y = bij.forward(x)
  ildj = bij.inverse_log_det_jacobian(checks.break_cache(y), event_ndims=nd)
  np.testing.assert_allclose(np.broadcast_to(ildj.numpy(), expected.shape), -expected.numpy(),
                             atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_bijective_and_finite(name):
  bij, event_shape, nd = _make(name, tf.float64)
  x = _x(event_shape, tf.float64, batch=5, seed=2)
  y = _x(bij.forward_event_shape(event_shape), tf.float64, batch=5, seed=3)
  checks.assert_bijective_and_finite(bij, x, y, nd, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_eager_function_and_xla_agree(name):
  bij, event_shape, nd = _make(name, tf.float32)
  x = _x(event_shape, tf.float32)

  def run(x):
    y = bij.forward(x)
    return (y, bij.forward_log_det_jacobian(x, event_ndims=nd),
            bij.inverse(tf.identity(y)), bij.inverse_log_det_jacobian(tf.identity(y), event_ndims=nd))

  eager = run(x)
  for fn in (tf.function(run), tf.function(run, jit_compile=True)):
    for a, b in zip(eager, fn(x)):
      np.testing.assert_allclose(np.broadcast_to(b.numpy(), np.shape(a)), a.numpy(), atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_loop_and_unbatched_input(name):
  bij, event_shape, nd = _make(name, tf.float64)
  x = _x(event_shape, tf.float64, batch=4)
  y = bij.forward(x)
  fldj = np.broadcast_to(bij.forward_log_det_jacobian(x, event_ndims=nd).numpy(), [4])
  for i in range(4):
    xi = tf.identity(x[i])      # rank == event ndims: how JointDistributions call bijectors
    np.testing.assert_allclose(bij.forward(xi).numpy(), y[i].numpy(), atol=1e-12)
    np.testing.assert_allclose(bij.forward_log_det_jacobian(xi, event_ndims=nd).numpy(),
                               fldj[i], atol=1e-12)
  # Extra batch dimensions: [2, 2, *event].
  x22 = tf.reshape(x, [2, 2, *event_shape])
  np.testing.assert_allclose(bij.forward(x22).numpy().reshape(y.shape), y.numpy(), atol=1e-12)


def test_coupling_runs_conditioner_once_per_log_prob():
  calls = []
  net = dense_net(2, 4, tf.float32, 0)
  def counting(x):
    calls.append(1)
    return net(x)
  bij = B.Coupling(counting, event_ndims=1)
  dist = tfp.distributions.TransformedDistribution(
      tfp.distributions.Sample(tfp.distributions.Normal(0., 1.), [4]), bij)
  dist.log_prob(tf.random.normal([3, 4]))
  assert len(calls) == 1


def test_constructor_errors_are_one_line_and_name_the_value():
  with pytest.raises(ValueError, match="mask must be one of"):
    B.Coupling(lambda x: x, mask="diagonal")
  with pytest.raises(ValueError, match="event_ndims must be 1"):
    B.ActNorm([0.], [0.], event_ndims=2)
  with pytest.raises(ValueError, match="not divisible by the factor 2"):
    B.Squeeze().forward(tf.zeros([1, 3, 4, 1]))
  with pytest.raises(ValueError, match="factor must be an integer >= 2"):
    B.Squeeze(1)
  with pytest.raises(ValueError, match="scale must be one of .* got 'softplus'"):
    B.Coupling(lambda x: x, scale="softplus")
  with pytest.raises(ValueError, match="scale='exp' applies to transform='affine'"):
    B.Coupling(lambda x: x, transform="additive", scale="exp")
  with pytest.raises(ValueError, match="clamp must be a finite number > 0, got -1"):
    B.Coupling(lambda x: x, scale="exp", clamp=-1)
  with pytest.raises(ValueError, match="shift must be one of .* got 'middle'"):
    B.Coupling(lambda x: x, shift="middle")


@pytest.mark.parametrize("raw,expected", [(0., 0.), (50., 0.5), (-50., -0.5), (0.2, None)])
def test_exp_scale_is_the_soft_clamped_log_scale(raw, expected):
  """`log s = c tanh(h / c)`: the identity at h = 0, at most `e^c` either way (c = 0.5)."""
  shift = 0.3
  net = lambda x: tf.concat([tf.fill(tf.shape(x), tf.constant(shift, x.dtype)),
                             tf.fill(tf.shape(x), tf.constant(raw, x.dtype))], -1)
  bij = B.Coupling(net, scale="exp", clamp=0.5, event_ndims=1)
  y = tf.constant([[1., 2., 3., 4.]], tf.float64)
  log_s = 0.5 * np.tanh(raw / 0.5) if expected is None else expected
  z = bij.inverse(y).numpy()
  np.testing.assert_allclose(z[:, :2], y.numpy()[:, :2])
  np.testing.assert_allclose(z[:, 2:], (y.numpy()[:, 2:] + shift) * np.exp(log_s), rtol=1e-12)
  np.testing.assert_allclose(bij.inverse_log_det_jacobian(y, event_ndims=1).numpy(),
                             [2 * log_s], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("scale", ["exp", "sigmoid"])
def test_latent_shift_is_realnvps_order(scale):
  """`shift="latent"`: `z_b = y_b s + t` (RealNVP, eq. 7), sampling `y_b = (z_b - t) / s`;
  the default `"data"`: `z_b = (y_b + t) s` (Glow). Same log-det."""
  shift, raw = 0.3, 0.7
  net = lambda x: tf.concat([tf.fill(tf.shape(x), tf.constant(shift, x.dtype)),
                             tf.fill(tf.shape(x), tf.constant(raw, x.dtype))], -1)
  latent = B.Coupling(net, scale=scale, shift="latent", event_ndims=1)
  data = B.Coupling(net, scale=scale, event_ndims=1)
  s = np.exp(10 * np.tanh(raw / 10)) if scale == "exp" else 1 / (1 + np.exp(-(raw + 2)))
  y = tf.constant([[1., 2., 3., 4.]], tf.float64)
  np.testing.assert_allclose(latent.inverse(y).numpy()[:, 2:], y.numpy()[:, 2:] * s + shift,
                             rtol=1e-12)
  np.testing.assert_allclose(data.inverse(y).numpy()[:, 2:], (y.numpy()[:, 2:] + shift) * s,
                             rtol=1e-12)
  np.testing.assert_allclose(latent.forward(y).numpy()[:, 2:], (y.numpy()[:, 2:] - shift) / s,
                             rtol=1e-12)
  np.testing.assert_allclose(latent.inverse_log_det_jacobian(y, event_ndims=1).numpy(),
                             data.inverse_log_det_jacobian(y, event_ndims=1).numpy(),
                             rtol=1e-12)


def test_lu_weight_matches_plain_conv_and_sum_of_log_scale():
  p = _lu_params(5, tf.float64, 11)
  lu = B.LUInvertible1x1Conv(**p)
  w = lu.weight()
  plain = B.Invertible1x1Conv(w)
  x = _x((2, 2, 5), tf.float64)
  np.testing.assert_allclose(lu.forward(x).numpy(), plain.forward(x).numpy(), atol=1e-10)
  np.testing.assert_allclose(lu.inverse_log_det_jacobian(x, 3).numpy(),
                             plain.inverse_log_det_jacobian(x, 3).numpy(), atol=1e-10)
  _, logdet = np.linalg.slogdet(w.numpy())
  np.testing.assert_allclose(logdet, np.sum(p["log_scale"].numpy()), atol=1e-10)
