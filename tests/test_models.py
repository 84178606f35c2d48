"""FlowModel under Keras 3: training every weight, init, saving, TFP composition, XLA."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import layers as L
from tfpflows import vi
from tfpflows.checkpoint import FlowCheckpoint
from tfpflows.models import build_flow

tfb, tfd = tfp.bijectors, tfp.distributions

VEC = dict(event_shape=(4,), num_steps=3, hidden=16)
IMG = dict(event_shape=(8, 8, 2), num_levels=2, num_steps=2, hidden=8)


def _vec_data(n=128, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randn(n, 4) * [1., 2., .5, 3.] + [1., -2., 0., 4.]).astype("float32")


def _img_data(n=16, seed=0):
  rng = np.random.RandomState(seed)
  return (rng.randint(0, 256, (n, 8, 8, 2)) + rng.rand(n, 8, 8, 2)).astype("float32")


def _model(name, kind):
  keras.utils.set_random_seed(0)
  model = build_flow(name, **(VEC if kind == "vec" else IMG))
  data = _vec_data() if kind == "vec" else _img_data()
  model.initialize(data)
  return model, data


def _expected_trainable(name, kind):
  """Weights per step: ActNorm 2, LU conv 2 (L/U and log|s|), conditioner 3 layers x 2."""
  per_step = {"glow": 2 + 2 + 6, "realnvp": 2 + 6, "nice": 6}[name]
  if kind == "vec":
    return per_step * VEC["num_steps"] + (2 if name == "nice" else 0)
  levels = IMG["num_levels"]
  return (per_step * IMG["num_steps"] * levels + 2 * (levels - 1)
          + (2 if name == "nice" else 0))


@pytest.mark.parametrize("name", ["glow", "realnvp", "nice"])
@pytest.mark.parametrize("kind", ["img"])   # vectors: tests/test_idioms.py, every idiom
def test_every_trainable_weight_trains_under_fit(name, kind):
  model, data = _model(name, kind)
  assert len(model.trainable_weights) == _expected_trainable(name, kind)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  ds = tf.data.Dataset.from_tensor_slices(data).batch(8).repeat()
  # Two steps: conditioners' last layers start at zero (identity flow), so on the first
  # step every layer before them has an exactly zero gradient; on the second, none does.
  hist = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
  unchanged = [w.path for w, b in zip(model.trainable_weights, before)
               if np.array_equal(w.numpy(), b)]
  assert not unchanged, f"weights that did not train: {unchanged}"
  assert np.isfinite(hist.history["loss"][-1])
  assert "nll" in hist.history
  assert ("bits_per_dim" in hist.history) == (kind == "img")


def test_one_more_step_moves_every_weight_once_training_has_begun():
  model, data = _model("glow", "img")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  ds = tf.data.Dataset.from_tensor_slices(data).batch(8).repeat()
  model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
  before = [w.numpy().copy() for w in model.trainable_weights]
  model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)
  assert all(not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before))


def test_nll_decreases_and_loss_is_mean_nll():
  model, data = _model("glow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(5e-3))
  ds = tf.data.Dataset.from_tensor_slices(data).batch(32).repeat()
  nll0 = -float(tf.reduce_mean(model(data)))
  hist = model.fit(ds, steps_per_epoch=40, epochs=2, verbose=0)
  assert hist.history["nll"][-1] < nll0
  np.testing.assert_allclose(hist.history["loss"], hist.history["nll"], rtol=1e-5)


def test_fit_traces_its_training_step_once():
  """Without a strategy Keras 3 creates the optimizer's slots inside the first trace, and a
  `tf.function` that creates variables is traced twice; `FlowModel.fit` builds them first."""
  model, data = _model("glow", "vec")
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  traces, step = [], model.train_step
  model.train_step = lambda batch: (traces.append(1), step(batch))[1]
  ds = tf.data.Dataset.from_tensor_slices(data).batch(32).repeat()
  model.fit(ds, steps_per_epoch=3, epochs=2, verbose=0)
  assert model.optimizer.built and len(traces) == 1


@pytest.mark.parametrize("kind", ["vec", "img"])
def test_actnorm_initialisation_whitens_its_input(kind):
  model, data = _model("glow", kind)
  assert model.initialized
  first = model.flow.flow_layers[0 if kind == "vec" else 1]
  assert isinstance(first, L.ActNormLayer)
  y = model._preprocess().inverse(data)
  if kind == "img":
    y = tfb.Invert(__import__("tfpflows").bijectors.Squeeze()).inverse(y)
  z = first.bijector().inverse(y).numpy().reshape(-1, y.shape[-1])
  np.testing.assert_allclose(z.mean(0), 0., atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1., atol=1e-3)


def test_fresh_model_is_not_initialised_and_fit_warns():
  model = build_flow("glow", **VEC)
  assert not model.initialized
  model.compile(optimizer="adam")
  with pytest.warns(UserWarning, match="not initialised"):
    model.fit(_vec_data(16), batch_size=8, epochs=1, verbose=0)


def test_initialise_rejects_a_batch_too_small():
  model = build_flow("glow", **VEC)
  with pytest.raises(ValueError, match="too small to initialise ActNorm"):
    model.initialize(_vec_data(1))
  with pytest.raises(ValueError, match="expected a batch of events of shape"):
    model.initialize(np.zeros([4, 3], "float32"))


@pytest.mark.parametrize("fmt", ["weights_h5", "keras", "checkpoint"])
def test_save_and_restore_keeps_actnorm_state_and_log_prob(tmp_path, fmt):
  model, data = _model("glow", "img")
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(), steps_per_epoch=2,
            epochs=1, verbose=0)
  expected = model.log_prob(data).numpy()
  if fmt == "keras":
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.models.load_model(path)
  else:
    restored = build_flow("glow", **IMG, seed=123)
    assert not restored.initialized
    if fmt == "weights_h5":
      path = str(tmp_path / "m.weights.h5")
      model.save_weights(path)
      restored.load_weights(path)
    else:
      FlowCheckpoint(model, tmp_path / "ckpt").save(7)
      restored.compile(optimizer=keras.optimizers.Adam(1e-2))
      assert FlowCheckpoint(restored, tmp_path / "ckpt").restore_latest() == 7
      assert int(restored.optimizer.iterations) == int(model.optimizer.iterations)
  assert restored.initialized
  np.testing.assert_array_equal(restored.log_prob(data).numpy(), expected)


def test_distribution_is_a_component_of_a_joint_distribution():
  model, data = _model("glow", "vec")
  flow = model.distribution()
  joint = tfd.JointDistributionNamed(dict(
      x=flow, y=lambda x: tfd.Normal(tf.reduce_sum(x, -1), 1.)))
  sample = joint.sample(5, seed=(1, 2))
  assert sample["x"].shape == (5, 4) and sample["y"].shape == (5,)
  lp = joint.log_prob(sample)
  expected = flow.log_prob(sample["x"]) + tfd.Normal(
      tf.reduce_sum(sample["x"], -1), 1.).log_prob(sample["y"])
  np.testing.assert_allclose(lp.numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)


def test_chains_with_tfps_own_bijectors():
  model, data = _model("glow", "vec")
  maf = tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork(params=2, hidden_units=[8]))
  chain = tfb.Chain([tfb.Shift(1.), model.bijector(), maf, tfb.Invert(tfb.Softplus())])
  dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0., 1.), [4]), chain)
  x = tf.constant(data[:6])
  lp = dist.log_prob(x)
  assert np.all(np.isfinite(lp.numpy()))
  z = chain.inverse(x)
  np.testing.assert_allclose(chain.forward(tf.identity(z)).numpy(), data[:6], atol=1e-4)
  inv = tfb.Invert(model.bijector())
  np.testing.assert_allclose(inv.forward(tf.identity(x)).numpy(),
                             model.encode(x).numpy(), atol=1e-6)


def test_temperature_scales_the_base_standard_deviation():
  model, _ = _model("glow", "vec")
  for t in (0.5, 1.0):
    z = model.encode(model.sample(4000, temperature=t, seed=(3, 4)))
    np.testing.assert_allclose(np.std(z.numpy()), t, rtol=0.05)


def test_fit_under_xla():
  model, data = _model("glow", "img")
  model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
  before = model.evaluate(data, batch_size=8, verbose=0)
  hist = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(),
                   steps_per_epoch=3, epochs=1, verbose=0)
  assert np.isfinite(hist.history["loss"][0]) and np.isfinite(before[0])


def test_image_log_prob_is_in_pixel_units():
  """log p over [0, 256) = log p of the scaled data - D log 256 (the change of variables)."""
  model, data = _model("glow", "img")
  lp = model.log_prob(data)
  scaled = tfd.TransformedDistribution(
      tfd.Sample(tfd.Normal(0., 1.), model.latent_shape), model.flow.bijector())
  expected = scaled.log_prob(data / 256. - 0.5) - np.prod(IMG["event_shape"]) * np.log(256.)
  np.testing.assert_allclose(lp.numpy(), expected.numpy(), rtol=1e-5)
  bpd = model.bits_per_dim(lp).numpy()
  np.testing.assert_allclose(bpd, -lp.numpy() / (128 * np.log(2.)), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="maf", event_shape=(2,)), "unknown model 'maf'"),
    (dict(name="glow", event_shape=(12, 12, 3), num_levels=3), "not divisible by 2\\*\\*num_levels"),
    (dict(name="glow", event_shape=(1,)), "D >= 2"),
    (dict(name="glow", event_shape=(4, 4)), "must be \\[D\\] or \\[H, W, C\\]"),
    (dict(name="glow", event_shape=(2,), permutation="shuffle"), "unknown permutation"),
    (dict(name="nice", event_shape=(2,), permutation="reverse"), "applies to glow only"),
])
def test_build_flow_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    build_flow(**kwargs)


def test_mixed_bfloat16_conditioners_keep_the_flow_in_float32():
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model, data = _model("glow", "img")
  finally:
    keras.mixed_precision.set_global_policy("float32")
  convs = [l for l in model._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
  assert convs and all(l.compute_dtype == "bfloat16" for l in convs)
  assert all(w.dtype == "float32" for w in model.weights if w.dtype != "int32")
  lp = model.log_prob(data)
  assert lp.dtype == tf.float32
  keras.utils.set_random_seed(0)
  reference = build_flow("glow", **IMG)
  reference.set_weights(model.get_weights())
  # Fresh model: zero last layers make it exact; after training bf16 is close, not equal.
  np.testing.assert_allclose(lp.numpy(), reference.log_prob(data).numpy(), rtol=1e-5)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  hist = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(), steps_per_epoch=2,
                   epochs=1, verbose=0)
  assert np.isfinite(hist.history["loss"][0])
  assert all(not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before))
  reference.set_weights(model.get_weights())
  # Same weights, float32 vs bfloat16 conditioners: log-densities agree to bf16 precision.
  np.testing.assert_allclose(model.log_prob(data).numpy(), reference.log_prob(data).numpy(),
                             rtol=0.02)


@pytest.mark.parametrize("permutation", ["plain", "reverse", "random"])
def test_glow_channel_mixing_alternatives_train_and_invert(permutation):
  keras.utils.set_random_seed(0)
  model = build_flow("glow", **IMG, permutation=permutation)
  data = _img_data()
  model.initialize(data)
  kinds = {type(l).__name__ for l in model._flatten_layers()}
  assert ("Conv1x1Layer" in kinds) == (permutation == "plain")
  assert ("PermuteLayer" in kinds) == (permutation != "plain")
  z = model.encode(data)
  np.testing.assert_allclose(model.decode(tf.identity(z)).numpy(), data, atol=2e-3)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  hist = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(),
                   steps_per_epoch=2, epochs=1, verbose=0)
  assert np.isfinite(hist.history["loss"][0])


def test_learn_top_is_a_learned_gaussian_prior_of_the_top_latent():
  """learn_top: the identity at initialisation; then log p(x) = log N(z; 0, I) +
  log|det dz/dx| with the top level's h = m + e^s z, by a brute-force Jacobian of the
  whole flow; two more trainable weights than without it, and bad uses are one line."""
  from tests import bijector_checks  # pylint: disable=g-import-not-at-top
  from tfpflows.layers import LearnedTopLayer  # pylint: disable=g-import-not-at-top
  shape = (4, 4, 1)
  plain = build_flow("glow", shape, num_levels=2, num_steps=1, hidden=8, seed=0)
  model = build_flow("glow", shape, num_levels=2, num_steps=1, hidden=8, seed=0,
                     learn_top=True)
  assert len(model.trainable_weights) == len(plain.trainable_weights) + 2
  x = tf.random.stateless_uniform((3, *shape), seed=(1, 2), maxval=256.0)
  np.testing.assert_allclose(model.log_prob(x), plain.log_prob(x), rtol=1e-6)  # identity
  (top,) = [l for l in model._flatten_layers() if isinstance(l, LearnedTopLayer)]
  assert top.shape == (1, 1, 8)
  rng = np.random.RandomState(0)
  top.loc.assign(rng.normal(size=top.shape).astype(np.float32))
  top.log_scale.assign(0.5 * rng.normal(size=top.shape).astype(np.float32))
  bijector = model.distribution().bijector   # latent -> pixels, preprocessing included
  z = bijector.inverse(x)
  expected = (tf.reduce_sum(tfp.distributions.Normal(0., 1.).log_prob(z), [1, 2, 3])
              - bijector_checks.brute_force_fldj(bijector, z, 3))
  np.testing.assert_allclose(model.log_prob(x), expected, rtol=2e-4, atol=2e-2)
  assert not np.allclose(model.log_prob(x), plain.log_prob(x), rtol=1e-3)
  for kwargs in (dict(name="resflow"), dict(name="glow", shape=(4,))):
    with pytest.raises(ValueError, match="learn_top=True applies to glow, realnvp and nice"):
      build_flow(kwargs["name"], kwargs.get("shape", shape), learn_top=True)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_latent_shift_side_trains_every_weight_inverts_and_reloads(name, tmp_path):
  """`shift_side="latent"` (RealNVP's coupling order, each ActNorm after its step's
  coupling) on images: the same weights, all trained by `fit`; exact round trip; `.keras`
  reload keeps the option."""
  keras.utils.set_random_seed(0)
  model = build_flow(name, **IMG, shift_side="latent")
  data = _img_data()
  model.initialize(data)
  assert len(model.trainable_weights) == _expected_trainable(name, "img")
  steps = [l for l in vi._data_side_first(model.flow)
           if type(l).__name__ in ("ActNormLayer", "CouplingLayer")]
  assert type(steps[0]).__name__ == "CouplingLayer"     # the ActNorm follows its coupling
  assert all(l.shift == "latent" for l in steps if type(l).__name__ == "CouplingLayer")
  z = model.encode(data)
  np.testing.assert_allclose(model.decode(tf.identity(z)).numpy(), data, atol=2e-3)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8).repeat(), steps_per_epoch=2,
            epochs=1, verbose=0)
  unchanged = [w.path for w, b in zip(model.trainable_weights, before)
               if np.array_equal(w.numpy(), b)]
  assert not unchanged, f"weights that did not train: {unchanged}"
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.get_config()["shift_side"] == "latent"
  np.testing.assert_allclose(loaded.log_prob(data).numpy(), model.log_prob(data).numpy(),
                             rtol=1e-5)
