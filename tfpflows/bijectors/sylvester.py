"""Sylvester flows (van den Berg et al., 2018): orthogonal and Householder, as a TFP bijector."""

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import dtype_util
from tensorflow_probability.python.internal import parameter_properties
from tensorflow_probability.python.internal import tensor_util

from tfpflows.bijectors.planar import MAX_ITERATIONS, solve_tanh_equation, tanh_and_sech2

tfb = tfp.bijectors

__all__ = ["KINDS", "Sylvester", "DIAGONAL_CLIP"]

KINDS = ("orthogonal", "householder")

# Raw diagonals of R and R~ are clipped to [-4, 4] before tanh: |R_ii|, |R~_ii| <= tanh(4),
# so 1 + R_ii R~_ii >= 1 - tanh(4)^2 = 1.3e-3 in any dtype (the map's conditioning is bounded
# for any raw values). tanh's slope there is 1.3e-3 already, so the clip costs no
# expressiveness in practice.
DIAGONAL_CLIP = 4.


def _matmul_last(x, m):
  """`x @ m` on the last axis of `x` (any rank >= 1)."""
  d = tf.shape(x)[-1]
  out = tf.matmul(tf.reshape(x, [-1, d]), m)
  return tf.reshape(out, tf.concat([tf.shape(x)[:-1], tf.shape(m)[-1:]], axis=0))


def _triangular(raw):
  """Upper-triangular matrix: strict upper part of `raw`, diagonal `tanh(clip(diag raw))`."""
  diag = tf.tanh(tf.clip_by_value(tf.linalg.diag_part(raw), -DIAGONAL_CLIP, DIAGONAL_CLIP))
  return tf.linalg.set_diag(tf.linalg.band_part(raw, 0, -1), diag)


def householder_product(vectors):
  r"""`Q = H_1 H_2 ... H_K`, :math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2` (`vectors`: `[K, D]`).

  A zero vector gives `H_k = I`.
  """
  k, d = vectors.shape
  q = tf.eye(d, dtype=vectors.dtype)
  for i in range(k):
    v = vectors[i]
    sq = tf.reduce_sum(tf.square(v))
    scale = tf.where(sq > 0., 2. / tf.where(sq > 0., sq, tf.ones_like(sq)), tf.zeros_like(sq))
    q -= scale * tf.matmul(tf.linalg.matvec(q, v)[:, None], v[None, :])
  return q


def _solve_rows(v, r, r_tilde, bias, max_iterations):
  """`w` with `w + R tanh(R~ w + b) = v` row by row (`v`: `[N, M]`), last component first.

  Component `i` depends only on components `> i` (both matrices are upper triangular), so
  each step is the 1-D increasing equation `w_i + R_ii tanh(R~_ii w_i + c_i) = s_i`.
  """
  m = tf.shape(v)[-1]
  diag_r, diag_rt = tf.linalg.diag_part(r), tf.linalg.diag_part(r_tilde)
  opd = 1. + diag_r * diag_rt

  def body(k, w):
    i = m - 1 - k
    # w holds zeros at components <= i, so these products only see solved components.
    t = tf.tanh(tf.matmul(w, r_tilde, transpose_b=True) + bias)            # valid for j > i
    later = tf.cast(tf.range(m) > i, v.dtype)
    s = tf.gather(v, i, axis=1) - tf.linalg.matvec(t, tf.gather(r, i) * later)
    c = tf.linalg.matvec(w, tf.gather(r_tilde, i)) + tf.gather(bias, i)
    wi = solve_tanh_equation(s, tf.gather(diag_r, i), tf.gather(diag_rt, i), c,
                             tf.gather(opd, i), max_iterations=max_iterations)
    step = wi[:, None] * tf.one_hot(i, m, dtype=v.dtype)[None, :]
    return k + 1, tf.ensure_shape(w + step, w.shape)   # one_hot's depth is dynamic

  _, w = tf.while_loop(lambda k, w: k < m, body, (tf.constant(0), tf.zeros_like(v)),
                       maximum_iterations=m)
  return w


def _solve_triangular_tanh(v, r, r_tilde, bias, max_iterations):
  """`_solve_rows` with the implicit-function gradient (no differentiation of the loops)."""

  @tf.custom_gradient
  def solve(v, r, r_tilde, bias):
    w = _solve_rows(v, r, r_tilde, bias, max_iterations)

    def grad(dw):
      # F(w) = w + tanh(w R~^T + b) R^T - v = 0: dL/dtheta = -(dF/dtheta)^T lam, J^T lam = dw.
      pre = tf.matmul(w, r_tilde, transpose_b=True) + bias
      t, s2 = tanh_and_sech2(pre)
      eye = tf.eye(tf.shape(r)[0], dtype=r.dtype)
      jac = eye + tf.matmul(r[None] * s2[:, None, :], r_tilde)       # [N, M, M], upper
      lam = tf.linalg.triangular_solve(jac, dw[..., None], lower=False, adjoint=True)[..., 0]
      g_pre = -tf.matmul(lam, r) * s2
      return (lam, -tf.matmul(lam, t, transpose_a=True),
              tf.matmul(g_pre, w, transpose_a=True), tf.reduce_sum(g_pre, axis=0))

    return w, grad

  return solve(v, r, r_tilde, bias)


class Sylvester(tfb.Bijector):
  r"""Sylvester flow: a residual map with an `M`-unit bottleneck and a triangular log-det.

  .. math::
      f(z) = z + Q R\, h(\tilde R Q^\top z + b), \qquad h = \tanh, \qquad
      \log|\det J_f(z)| = \sum_{i=1}^{M} \log\left|1 + R_{ii} \tilde R_{ii}\,
      h'\big((\tilde R Q^\top z + b)_i\big)\right|

  by Sylvester's determinant identity, with `Q` a `D x M` matrix of orthonormal columns and
  `R`, `R~` upper-triangular `M x M`. Constraints, applied here to raw parameters:

  * `kind="orthogonal"`: `Q` from the QR decomposition of a raw `[D, M]` matrix (`M <= D`).
  * `kind="householder"`: `Q = H_1 ... H_K`, a product of `K` Householder reflections
    `H_k = I - 2 v_k v_k^T / ||v_k||^2` from raw vectors `[K, D]`; `M = D`.
  * `R = triu(raw_r)` with diagonal `tanh(raw_r_ii)` (likewise `R~`), raw diagonals clipped
    to `[-4, 4]`, so `R_ii R~_ii >= -tanh(4)^2 > -1` and `f` is invertible for any raw values.

  Inverse: with :math:`w = Q^\top z`, :math:`Q^\top y = w + R\, h(\tilde R w + b)` is upper
  triangular in `w`: component `i` is the increasing 1-D equation
  :math:`w_i + R_{ii} \tanh(\tilde R_{ii} w_i + c_i) = s_i` given the components after it,
  solved from the last by bracketed Newton (bounded `tf.while_loop`s); the orthogonal
  complement of `Q` passes unchanged, :math:`z = y - Q R\, h(\tilde R w + b)`. Its gradient
  is the implicit-function one (a triangular solve), not a differentiation of the loops.

  Args:
    q_raw: float tensor, `[D, M]` (orthogonal) or `[K, D]` (householder); unbatched.
    r_raw: float tensor `[M, M]`; its strict lower part is ignored.
    r_tilde_raw: float tensor `[M, M]`; likewise.
    bias: float tensor `[M]`.
    kind: `"orthogonal"` or `"householder"`.
    max_iterations: bound of each 1-D solve of the inverse.

  References:
    van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows for
    Variational Inference", UAI 2018, sections 3 and 4.
  """

  def __init__(self, q_raw, r_raw, r_tilde_raw, bias, *, kind="orthogonal",
               max_iterations=MAX_ITERATIONS, validate_args=False, name="sylvester"):
    parameters = dict(locals())
    if kind not in KINDS:
      raise ValueError(f"Sylvester: kind must be one of {KINDS}, got {kind!r}")
    if int(max_iterations) < 1:
      raise ValueError(f"Sylvester: max_iterations must be >= 1, got {max_iterations!r}")
    with tf.name_scope(name) as name:
      dtype = dtype_util.common_dtype([q_raw, r_raw, r_tilde_raw, bias], dtype_hint=tf.float32)
      self._q_raw = tensor_util.convert_nonref_to_tensor(q_raw, dtype=dtype, name="q_raw")
      self._r_raw = tensor_util.convert_nonref_to_tensor(r_raw, dtype=dtype, name="r_raw")
      self._r_tilde_raw = tensor_util.convert_nonref_to_tensor(r_tilde_raw, dtype=dtype,
                                                               name="r_tilde_raw")
      self._bias = tensor_util.convert_nonref_to_tensor(bias, dtype=dtype, name="bias")
      self._kind = kind
      self._max_iterations = int(max_iterations)
      self._check_shapes()
      super().__init__(
          forward_min_event_ndims=1,
          is_constant_jacobian=False,
          validate_args=validate_args,
          dtype=dtype,
          parameters=parameters,
          name=name)

  def _check_shapes(self):
    shapes = {k: t.shape for k, t in (("q_raw", self._q_raw), ("r_raw", self._r_raw),
                                      ("r_tilde_raw", self._r_tilde_raw), ("bias", self._bias))}
    for key, rank in (("q_raw", 2), ("r_raw", 2), ("r_tilde_raw", 2), ("bias", 1)):
      if shapes[key].rank != rank or not shapes[key].is_fully_defined():
        raise ValueError(f"Sylvester: {key} must be a rank-{rank} tensor of known shape "
                         f"(no batch of parameters), got shape {shapes[key]}")
    a, b = shapes["q_raw"]
    d, m = (a, b) if self._kind == "orthogonal" else (b, b)
    if self._kind == "orthogonal" and m > d:
      raise ValueError(f"Sylvester: orthogonal q_raw must be [D, M] with M <= D, got [{d}, {m}]")
    for key in ("r_raw", "r_tilde_raw"):
      if tuple(shapes[key]) != (m, m):
        raise ValueError(f"Sylvester: {key} must have shape [{m}, {m}] (M from q_raw, "
                         f"kind={self._kind!r}), got {list(shapes[key])}")
    if tuple(shapes["bias"]) != (m,):
      raise ValueError(f"Sylvester: bias must have shape [{m}], got {list(shapes['bias'])}")
    self._d, self._m = d, m

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict(
        q_raw=parameter_properties.ParameterProperties(event_ndims=2),
        r_raw=parameter_properties.ParameterProperties(event_ndims=2),
        r_tilde_raw=parameter_properties.ParameterProperties(event_ndims=2),
        bias=parameter_properties.ParameterProperties(event_ndims=1))

  @property
  def kind(self):
    return self._kind

  @property
  def num_hidden(self):
    """`M`, the number of columns of `Q`."""
    return self._m

  def q(self):
    """`Q`, `[D, M]` with orthonormal columns."""
    raw = tf.convert_to_tensor(self._q_raw)
    if self._kind == "orthogonal":
      return tf.linalg.qr(raw, full_matrices=False)[0]
    return householder_product(raw)

  def matrices(self):
    """`(Q, R, R~, b)` from the raw parameters."""
    return (self.q(), _triangular(tf.convert_to_tensor(self._r_raw)),
            _triangular(tf.convert_to_tensor(self._r_tilde_raw)),
            tf.convert_to_tensor(self._bias))

  def _fldj_from_pre(self, pre, r, r_tilde):
    t, s2 = tanh_and_sech2(pre)
    opd = 1. + tf.linalg.diag_part(r) * tf.linalg.diag_part(r_tilde)
    # 1 + R_ii R~_ii h' = tanh^2 + sech^2 (1 + R_ii R~_ii): no cancellation near the bound.
    return tf.reduce_sum(tf.math.log(tf.square(t) + s2 * opd), axis=-1), t

  def _forward_and_fldj(self, z):
    q, r, r_tilde, b = self.matrices()
    pre = _matmul_last(_matmul_last(z, q), tf.transpose(r_tilde)) + b
    fldj, t = self._fldj_from_pre(pre, r, r_tilde)
    return z + _matmul_last(t, tf.transpose(tf.matmul(q, r))), fldj

  def _forward(self, z):
    y, fldj = self._forward_and_fldj(z)
    self._cache.forward_attributes(z)["ildj"] = -fldj
    return y

  def _forward_log_det_jacobian(self, z):
    return self._forward_and_fldj(z)[1]

  def _inverse(self, y):
    q, r, r_tilde, b = self.matrices()
    v = _matmul_last(y, q)
    flat_v = tf.reshape(v, [-1, self._m])
    flat_w = _solve_triangular_tanh(flat_v, r, r_tilde, b, self._max_iterations)
    w = tf.reshape(flat_w, tf.shape(v))
    pre = _matmul_last(w, tf.transpose(r_tilde)) + b
    fldj, t = self._fldj_from_pre(pre, r, r_tilde)
    self._cache.inverse_attributes(y)["ildj"] = -fldj
    return y - _matmul_last(t, tf.transpose(tf.matmul(q, r)))
