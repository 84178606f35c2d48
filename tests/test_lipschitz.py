"""Lipschitz networks for residual flows: spectral norms checked against SVDs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows.layers import lipschitz as lip

COEFF = 0.9
RTOL = 1e-2


# -- independent norms ----------------------------------------------------------------------


def conv_operator_matrix(kernel, h, w, padding):
  """Matrix of `x -> conv2d(x, kernel)` on `[h, w, C_in]` inputs, built from basis vectors."""
  kernel = np.asarray(kernel, np.float64)
  c_in = kernel.shape[2]
  n = h * w * c_in
  basis = np.eye(n).reshape(n, h, w, c_in)
  out = tf.nn.conv2d(tf.constant(basis), tf.constant(kernel), strides=1, padding=padding.upper())
  return out.numpy().reshape(n, -1)


def operator_norm(layer, kernel):
  """Largest singular value of the layer's linear map with `kernel`, by `np.linalg.svd`."""
  kernel = np.asarray(kernel, np.float64)
  if isinstance(layer, lip.SpectralNormDense):
    matrix = kernel
  else:
    matrix = conv_operator_matrix(kernel, *layer.input_spatial, layer.padding)
  return np.linalg.svd(matrix, compute_uv=False)[0]


# layer factory, input shape
CASES = {
    "dense": (lambda **kw: lip.SpectralNormDense(7, **kw), (16, 6)),
    "conv3x3": (lambda **kw: lip.SpectralNormConv2D(5, 3, **kw), (4, 4, 4, 3)),
    "conv3x3_valid": (lambda **kw: lip.SpectralNormConv2D(5, 3, padding="valid", **kw),
                      (4, 4, 4, 3)),
    "conv2x3": (lambda **kw: lip.SpectralNormConv2D(5, (2, 3), **kw), (4, 4, 4, 3)),
    "conv1x1": (lambda **kw: lip.SpectralNormConv2D(5, 1, **kw), (4, 4, 4, 3)),
}


def make_layer(case, raw_norm, seed=0, **kwargs):
  """A built layer whose raw kernel has operator norm `raw_norm`."""
  factory, shape = CASES[case]
  layer = factory(coeff=COEFF, seed=seed, **kwargs)
  layer.build(shape)
  kernel = np.random.RandomState(seed).randn(*layer.kernel.shape)
  layer.kernel.assign(kernel * raw_norm / operator_norm(layer, kernel))
  layer.bias.assign(np.random.RandomState(seed + 1).randn(*layer.bias.shape))
  return layer, shape


def warm_up(obj, n=200):
  """`obj.update_vectors(n)` in one graph (an eager `tf.while_loop` is slow)."""
  return tf.function(lambda: obj.update_vectors(n))()


def in_graph(fn, *args, **kwargs):
  return tf.function(lambda: fn(*args, **kwargs))()


def train(model_fn, variables, x, steps, optimizer=None):
  """Optimizer steps (Adam 1e-3 by default) on `sum(model_fn(x, training=True) * target)`."""
  y0 = model_fn(x, training=False)
  target = tf.constant(np.random.RandomState(7).randn(*y0.shape), y0.dtype)
  optimizer = optimizer or keras.optimizers.Adam(1e-3)
  optimizer.build(variables)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model_fn(x, training=True) * target)
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  for _ in range(steps):
    step()


# -- spectral normalisation ------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_normalised_norm_is_coeff_after_training(case):
  # Default settings: one power-iteration step per training call, after a warm-up.
  layer, shape = make_layer(case, raw_norm=5.0)
  warm_up(layer)
  x = tf.random.stateless_normal(shape, [1, 2])
  train(layer, layer.trainable_weights, x, steps=30)
  raw = operator_norm(layer, layer.kernel.numpy())
  assert raw > 4.0                          # far above coeff
  # The kernel used at evaluation, and the one a training step uses.
  for training in (False, True):
    norm = operator_norm(layer, layer.normalized_kernel(training=training).numpy())
    assert COEFF * (1 - RTOL) <= norm <= COEFF * (1 + RTOL), (training, norm, raw)
  # The logged estimate agrees.
  np.testing.assert_allclose(in_graph(layer.spectral_norm).numpy(), COEFF, rtol=RTOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tolerance_mode_keeps_up_with_large_steps(case):
  # No warm-up, large SGD steps: iterating to a tolerance in each training call keeps the
  # kernel a training step uses at coeff.
  layer, shape = make_layer(case, raw_norm=5.0, n_iterations=100, tolerance=1e-4)
  x = tf.random.stateless_normal(shape, [1, 2])
  train(layer, layer.trainable_weights, x, steps=20, optimizer=keras.optimizers.SGD(1e-2))
  raw = operator_norm(layer, layer.kernel.numpy())
  assert raw > 3.0
  norm = operator_norm(layer, layer.normalized_kernel(training=True).numpy())
  assert COEFF * (1 - RTOL) <= norm <= COEFF * (1 + RTOL), (norm, raw)


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_below_coeff_is_left_unchanged(case):
  layer, _ = make_layer(case, raw_norm=0.5)
  warm_up(layer)
  np.testing.assert_allclose(in_graph(layer.normalized_kernel).numpy(), layer.kernel.numpy(),
                             rtol=1e-6)
  np.testing.assert_allclose(in_graph(layer.spectral_norm).numpy(), 0.5, rtol=RTOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vectors_persist_change_in_training_and_converge(case):
  layer, shape = make_layer(case, raw_norm=3.0, n_iterations=1, eval_iterations=20)
  x = tf.random.stateless_normal(shape, [3, 4])
  u0, v0 = layer.u.numpy(), layer.v.numpy()
  np.testing.assert_allclose(np.linalg.norm(u0), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(v0), 1.0, rtol=1e-5)
  # Evaluation does not write the vectors back.
  layer(x, training=False)
  layer(x)
  np.testing.assert_array_equal(layer.u.numpy(), u0)
  np.testing.assert_array_equal(layer.v.numpy(), v0)
  # One training call runs one step and writes it back.
  layer(x, training=True)
  assert np.abs(layer.u.numpy() - u0).max() > 1e-3
  assert np.abs(layer.v.numpy() - v0).max() > 1e-3
  # Under training the vectors follow the kernel; the estimate u^T W v is a lower bound.
  train(layer, layer.trainable_weights, x, steps=30)
  assert np.abs(layer.u.numpy() - u0).max() > 0.1
  true_sigma = operator_norm(layer, layer.kernel.numpy())
  stored_sigma = layer.update_vectors(0).numpy()          # no step: the stored vectors
  assert 0.5 * true_sigma < stored_sigma <= true_sigma * (1 + 1e-5), (stored_sigma, true_sigma)
  # Training calls with the kernel fixed converge to the true sigma.
  step = tf.function(lambda: layer(x, training=True))
  for _ in range(300):
    step()
  np.testing.assert_allclose(layer.update_vectors(0).numpy(), true_sigma, rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(layer.u.numpy()), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(layer.v.numpy()), 1.0, rtol=1e-5)


@pytest.mark.parametrize("case", ["dense", "conv3x3"])
def test_gradient_flows_through_sigma_with_vectors_constant(case):
  # eval_iterations=0: the stored (converged) u, v are used as they are.
  layer, shape = make_layer(case, raw_norm=5.0, eval_iterations=0)
  warm_up(layer)
  x = tf.random.stateless_normal(shape, [4, 4])
  target = tf.random.stateless_normal(layer.compute_output_shape(shape), [5, 5])
  u, v = tf.constant(layer.u.numpy()), tf.constant(layer.v.numpy())

  def reference(kernel, through_sigma):
    if case == "dense":
      sigma = tf.tensordot(u, tf.linalg.matvec(kernel, v, transpose_a=True), 1)
      apply = lambda k: x @ k
    else:
      sigma = tf.reduce_sum(u * tf.nn.conv2d(v, kernel, 1, "SAME"))
      apply = lambda k: tf.nn.conv2d(x, k, 1, "SAME")
    if not through_sigma:
      sigma = tf.stop_gradient(sigma)
    return tf.reduce_sum(target * apply(kernel * COEFF / sigma))

  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(target * (layer(x) - layer.bias))
  grad = tape.gradient(loss, layer.kernel).numpy()
  expected = {}
  for through in (True, False):
    kernel = tf.constant(layer.kernel.numpy())
    with tf.GradientTape() as tape:
      tape.watch(kernel)
      ref_loss = reference(kernel, through)
    expected[through] = tape.gradient(ref_loss, kernel).numpy()
  np.testing.assert_allclose(grad, expected[True], rtol=1e-3, atol=1e-4)
  assert np.abs(expected[True] - expected[False]).max() > 1e-2    # the test can tell


def test_conv_power_iteration_uses_the_operator_not_the_reshaped_kernel():
  # For a 3x3 kernel the operator norm on a 4x4 input differs from the norm of the kernel
  # reshaped to [9 C_in, C_out] (what a matrix-based spectral norm would normalise).
  layer, _ = make_layer("conv3x3", raw_norm=5.0)
  warm_up(layer)
  kernel = layer.kernel.numpy()
  reshaped = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
  assert abs(reshaped - 5.0) > 0.2
  np.testing.assert_allclose(layer.update_vectors(0).numpy(), 5.0, rtol=1e-3)


@pytest.mark.parametrize("case", ["dense", "conv3x3", "conv1x1"])
def test_zero_init_is_exactly_zero_and_finite(case):
  factory, shape = CASES[case]
  layer = factory(coeff=COEFF, zero_init=True, seed=0)
  x = tf.random.stateless_normal(shape, [5, 6])
  with tf.GradientTape() as tape:
    y_train = layer(x, training=True)
    loss = tf.reduce_sum(y_train * tf.random.stateless_normal(y_train.shape, [1, 1]))
  grads = tape.gradient(loss, layer.trainable_weights)
  for y in (y_train, layer(x), layer(x, training=False)):
    np.testing.assert_array_equal(y.numpy(), 0.0)
  for t in grads + [layer.u, layer.v, layer.spectral_norm()]:
    assert np.all(np.isfinite(np.asarray(t))), t
  np.testing.assert_allclose(np.linalg.norm(layer.u.numpy()), 1.0, rtol=1e-5)   # still unit
  # The kernel gets a gradient; after a step the layer runs and normalises as usual.
  assert np.abs(grads[0].numpy()).max() > 0
  layer.kernel.assign(grads[0] * (50.0 / operator_norm(layer, grads[0].numpy())))
  step = tf.function(lambda: layer(x, training=True))
  for _ in range(150):
    step()
  assert np.all(np.isfinite(layer.u.numpy())) and np.all(np.isfinite(layer.v.numpy()))
  norm = operator_norm(layer, layer.normalized_kernel().numpy())
  np.testing.assert_allclose(norm, COEFF, rtol=RTOL)


def test_constructor_and_build_errors():
  with pytest.raises(ValueError, match="coeff must be > 0"):
    lip.SpectralNormDense(3, coeff=0.0)
  with pytest.raises(ValueError, match="n_iterations must be an int >= 0"):
    lip.SpectralNormDense(3, n_iterations=-1)
  with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
    lip.SpectralNormConv2D(3, 3, padding="causal")
  with pytest.raises(ValueError, match="known H, W"):
    lip.SpectralNormConv2D(3, 3).build((None, None, None, 2))
  with pytest.raises(ValueError, match="activation must be one of"):
    lip.lipschitz_activation("relu6")
  with pytest.raises(ValueError, match="activation must be one of"):
    lip.lipschitz_mlp(2, activation="relu")


# -- activations --------------------------------------------------------------------------


def test_lipswish_beta_positive_and_one_lipschitz():
  act = lip.LipSwish(dtype="float64")          # float64: quotients of close pairs
  act.build(())
  np.testing.assert_allclose(act.beta.numpy(), np.log1p(np.exp(0.5)), rtol=1e-6)  # as normflows
  rng = np.random.RandomState(0)
  a = rng.randn(20000) * 4
  b = a + rng.randn(20000) * rng.choice([1e-3, 1.0], 20000)
  for raw in (-80.0, -5.0, 0.0, 0.5, 3.0, 30.0):
    act.raw_beta.assign(raw)
    assert act.beta.numpy() > 0, raw
    ratio = np.abs(act(a).numpy() - act(b).numpy()) / np.abs(a - b)
    assert ratio.max() <= 1.0 + 1e-4, (raw, ratio.max())
  # The 1/1.1 is tight: the largest slope is within 0.1% of 1 (for every beta).
  act.raw_beta.assign(0.5)
  x = tf.constant(np.linspace(-20, 20, 40001))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = act(x)
  slope = tape.gradient(y, x).numpy()
  assert 0.999 < slope.max() <= 1.0 + 1e-6, slope.max()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(act(tf.constant(a * a)))
  assert abs(tape.gradient(loss, act.raw_beta).numpy()) > 0


@pytest.mark.parametrize("name", ["lipswish", "elu", "tanh", "softplus"])
def test_activation_slopes_at_most_one(name):
  act = lip.lipschitz_activation(name)
  x = tf.constant(np.linspace(-30, 30, 60001), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = act(x)
  slope = np.abs(tape.gradient(y, x).numpy())
  assert 0.9 < slope.max() <= 1.0 + 1e-6, (name, slope.max())


# -- networks -------------------------------------------------------------------------------


NETS = {
    "mlp": (lambda **kw: lip.lipschitz_mlp(4, (16, 16), coeff=COEFF, **kw), (32, 4), 3),
    "mlp_elu_postact": (lambda **kw: lip.lipschitz_mlp(4, (16,), activation="elu", coeff=COEFF,
                                                       preactivation=False, **kw), (32, 4), 2),
    "conv": (lambda **kw: lip.lipschitz_conv_net(2, 8, coeff=COEFF, **kw), (4, 4, 4, 2), 3),
}


def make_net(name, raw_norm=4.0, **kwargs):
  factory, shape, num_linear = NETS[name]
  net = factory(**kwargs)
  net.build(shape)
  rng = np.random.RandomState(0)
  for layer in net.spectral_layers:
    kernel = rng.randn(*layer.kernel.shape)
    layer.kernel.assign(kernel * raw_norm / operator_norm(layer, kernel))
    layer.bias.assign(rng.randn(*layer.bias.shape) * 0.1)
  return net, shape, num_linear


def test_architecture_matches_normflows_lipschitz_mlp_and_resflow_block():
  net = lip.lipschitz_mlp(3, (64, 64))
  kinds = [type(l).__name__ for l in net.net_layers]
  assert kinds == ["LipSwish", "SpectralNormDense"] * 3
  assert [l.units for l in net.spectral_layers] == [64, 64, 3]
  assert [l.zero_init for l in net.spectral_layers] == [False, False, True]
  conv = lip.lipschitz_conv_net(6, 32, preactivation=False)
  kinds = [type(l).__name__ for l in conv.net_layers]
  assert kinds == ["SpectralNormConv2D", "LipSwish", "SpectralNormConv2D", "LipSwish",
                   "SpectralNormConv2D"]
  assert [l.kernel_size for l in conv.spectral_layers] == [(3, 3), (1, 1), (3, 3)]
  assert [l.filters for l in conv.spectral_layers] == [32, 32, 6]


@pytest.mark.parametrize("name", sorted(NETS))
def test_lipschitz_bound(name):
  net, shape, num_linear = make_net(name)
  x = tf.random.stateless_normal(shape, [8, 9])
  warm_up(net)
  train(net, net.trainable_weights, x, steps=30)      # training=True reaches every layer
  for layer in net.spectral_layers:
    norm = operator_norm(layer, layer.normalized_kernel().numpy())
    assert COEFF * (1 - RTOL) <= norm <= COEFF * (1 + RTOL), (layer.name, norm)
  bound = net.lipschitz_bound().numpy()
  assert bound <= COEFF ** num_linear * (1 + 1e-5), bound
  np.testing.assert_allclose(bound, COEFF ** num_linear, rtol=RTOL)
  # A numerical lower bound on Lip(g): difference quotients of random pairs, far and near
  # (weak, ~1/40 of the bound here, but 4 ** 3 times larger without the normalisation).
  a = tf.random.stateless_normal((512,) + shape[1:], [1, 0])
  scale = tf.reshape(tf.constant([1.0, 1e-2] * 256), (512,) + (1,) * (len(shape) - 1))
  b = a + scale * tf.random.stateless_normal(a.shape, [2, 0])
  diff = tf.reshape(in_graph(lambda: net(a) - net(b)), [512, -1])
  quotient = np.linalg.norm(diff, axis=1) / np.linalg.norm(tf.reshape(a - b, [512, -1]), axis=1)
  assert 0 < quotient.max() <= bound, (quotient.max(), bound)


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_trainable_weight_gets_a_gradient(name):
  net, shape, _ = make_net(name)
  assert len(net.trainable_weights) == 2 * len(net.spectral_layers) + sum(
      isinstance(l, lip.LipSwish) for l in net.net_layers)
  x = tf.random.stateless_normal(shape, [3, 3])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(net(x, training=True) * tf.random.stateless_normal(
        tf.shape(net(x)), [4, 4]))
  for w, g in zip(net.trainable_weights, tape.gradient(loss, net.trainable_weights)):
    assert g is not None and np.abs(g.numpy()).max() > 0, w.path


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_zero_init_last_network_is_zero_and_trains(name):
  factory, shape, _ = NETS[name]
  net = factory()
  x = tf.random.stateless_normal(shape, [6, 6])
  np.testing.assert_array_equal(net(x, training=True).numpy(), 0.0)
  np.testing.assert_array_equal(net(x).numpy(), 0.0)
  # One step moves the last layer away from zero; then every weight has a gradient.
  train(net, net.trainable_weights, x, steps=1, optimizer=keras.optimizers.SGD(0.1))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(net(x, training=True) - 1.0))
  grads = tape.gradient(loss, net.trainable_weights)
  for w, g in zip(net.trainable_weights, grads):
    assert np.all(np.isfinite(g.numpy())) and np.abs(g.numpy()).max() > 0, w.path


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_eager_function_and_xla_agree(name):
  net, shape, _ = make_net(name)
  x = tf.random.stateless_normal(shape, [2, 2])
  eager = net(x, training=False).numpy()
  graph = tf.function(lambda x: net(x, training=False))(x).numpy()
  xla = tf.function(lambda x: net(x, training=False), jit_compile=True)(x).numpy()
  np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-5)
  # A training call writes the same vectors back in every regime.
  start = [l.u.numpy() for l in net.spectral_layers] + [l.v.numpy() for l in net.spectral_layers]
  results = []
  for fn in (lambda x: net(x, training=True), tf.function(lambda x: net(x, training=True)),
             tf.function(lambda x: net(x, training=True), jit_compile=True)):
    for var, value in zip([l.u for l in net.spectral_layers] + [l.v for l in net.spectral_layers],
                          start):
      var.assign(value)
    y = fn(x).numpy()
    results.append((y, [l.u.numpy() for l in net.spectral_layers]))
  for y, us in results[1:]:
    np.testing.assert_allclose(y, results[0][0], rtol=1e-4, atol=1e-5)
    for u, u0 in zip(us, results[0][1]):
      np.testing.assert_allclose(u, u0, rtol=1e-4, atol=1e-5)
  assert max(np.abs(u - s).max() for u, s in zip(results[0][1], start)) > 1e-3


def test_fit_propagates_training_and_predict_does_not_update():
  net, shape, _ = make_net("mlp")
  model = keras.Sequential([keras.Input(shape[1:]), net])
  model.compile(keras.optimizers.Adam(1e-3), "mse")
  x = np.random.RandomState(0).randn(64, *shape[1:]).astype("float32")
  warm_up(net)
  u0 = [l.u.numpy() for l in net.spectral_layers]
  model.predict(x, verbose=0)
  for l, u in zip(net.spectral_layers, u0):
    np.testing.assert_array_equal(l.u.numpy(), u)
  before = [w.numpy() for w in net.trainable_weights]
  model.fit(x, x, batch_size=16, epochs=2, verbose=0)
  for l, u in zip(net.spectral_layers, u0):
    assert np.abs(l.u.numpy() - u).max() > 1e-3, l.name
  for w, b in zip(net.trainable_weights, before):
    assert np.abs(w.numpy() - b).max() > 0, w.path
  for layer in net.spectral_layers:
    assert operator_norm(layer, layer.normalized_kernel().numpy()) <= COEFF * (1 + RTOL)


def test_save_and_reload_keras_format(tmp_path):
  net, shape, _ = make_net("conv")
  model = keras.Sequential([keras.Input(shape[1:]), net])
  x = tf.random.stateless_normal(shape, [1, 9])
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-7)
  assert len(loaded.weights) == len(model.weights)


def test_eager_power_iteration_is_one_shared_graph_and_holds_no_layer(caplog):
  """Eagerly, the power iteration runs as a graph shared by the layers of one operator
  kind and shape (seven same-shape layers: one function, traced once), the same vectors
  as in a `tf.function`, no retracing warning, and no reference keeping a layer."""
  import gc  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  import weakref  # pylint: disable=g-import-not-at-top
  layers = [make_layer("dense", 3.0, seed=s)[0] for s in range(7)]
  start = [(l.u.numpy(), l.v.numpy()) for l in layers]
  shared = lip._EAGER_ITERATION  # pylint: disable=protected-access
  before = set(shared)
  with caplog.at_level(logging.WARNING, logger="tensorflow"):
    eager = [float(l.update_vectors(50)) for l in layers]
  assert not [r for r in caplog.records if "retracing" in r.getMessage()]
  mine = ("matvec", layers[0].epsilon, layers[0].tolerance, tuple(layers[0].kernel.shape))
  keys = [k for k in shared if k[:4] == mine]
  assert len(keys) == 1 and set(shared) - before <= set(keys)     # 7 layers, one function
  assert shared[keys[0]].experimental_get_tracing_count() == 1     # traced once
  for layer, (u, v), sigma in zip(layers, start, eager):
    eager_u = layer.u.numpy()
    layer.u.assign(u)
    layer.v.assign(v)
    assert float(in_graph(layer.update_vectors, 50)) == pytest.approx(sigma, rel=1e-6)
    np.testing.assert_allclose(layer.u.numpy(), eager_u, rtol=1e-5, atol=1e-6)
  refs = [weakref.ref(l) for l in layers]
  del layers, layer
  gc.collect()
  assert not any(r() is not None for r in refs)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
def test_parametric_is_the_call_with_the_same_write_back_and_gradients(name, training,
                                                                        precision):
  """`fn(x, params)` from `parametric(training)`, in a `tf.function`, gives `call`'s
  output, the same power-iteration write-back (training) or none (evaluation), and the
  same gradients to every raw weight (kernels, biases, LipSwish's raw beta), under a
  mixed-precision policy too (both in the layers' compute dtype)."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(precision)
  try:
    net, shape, _ = make_net(name)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  x = tf.constant(np.random.RandomState(1).randn(*shape), tf.float32)
  start = [(l.u.numpy(), l.v.numpy()) for l in net.spectral_layers]

  def run(parametric):
    for layer, (u, v) in zip(net.spectral_layers, start):
      layer.u.assign(u)
      layer.v.assign(v)

    @tf.function
    def f():
      with tf.GradientTape() as tape:
        if parametric:
          fn, params = net.parametric(training=training)
          y = fn(x, params)
        else:
          y = net(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
      return y, tape.gradient(loss, net.trainable_variables)

    y, grads = f()
    vectors = [(l.u.numpy(), l.v.numpy()) for l in net.spectral_layers]
    return y, grads, vectors

  y_call, g_call, vec_call = run(False)
  y_par, g_par, vec_par = run(True)
  assert y_par.dtype == y_call.dtype
  assert len(g_par) == len(g_call) == len(net.trainable_variables)
  assert all(a is not None and np.any(np.asarray(a) != 0) for a in g_par)
  if precision == "float32":
    np.testing.assert_allclose(y_par, y_call, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_par, g_call):
      scale = max(1e-3, float(np.abs(b).max()))
      np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, rtol=1e-5,
                                 atol=1e-6)
    vec_tol = dict(rtol=1e-5, atol=1e-6)
  else:
    # bfloat16 rounds in different places: Keras' call iterated and normalised the
    # bfloat16-rounded kernel; `parametric` normalises the float32 kernel, then rounds.
    np.testing.assert_allclose(np.asarray(y_par, np.float32), np.asarray(y_call, np.float32),
                               rtol=3e-2, atol=3e-2)
    flat = lambda gs: np.concatenate([np.asarray(g, np.float64).ravel() for g in gs])
    a, b = flat(g_par), flat(g_call)
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    vec_tol = dict(rtol=2e-2, atol=1e-2)
  for (u1, v1), (u2, v2), (u0, v0) in zip(vec_par, vec_call, start):
    np.testing.assert_allclose(u1, u2, **vec_tol)
    np.testing.assert_allclose(v1, v2, **vec_tol)
    assert np.array_equal(u1, u0) != training      # written back only in training
