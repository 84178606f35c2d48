"""Training recipes (`tfpflows.recipes`): the schedule against its formula, Adamax, clipping,
the EMA against its recurrence, exact swaps, and exact resume with all of them."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows import data, models, recipes, training
from tfpflows.checkpoint import FlowCheckpoint


def _expected_rate(t, lr, warmup, decay, total, final):
  rate = lr * (min(1.0, (t + 1) / warmup) if warmup else 1.0)
  if decay == "constant":
    return rate
  s = min(1.0, max(0.0, (t - warmup) / (total - warmup)))
  d = (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * s)) if decay == "cosine"
       else 1 - (1 - final) * s)
  return rate * d


@pytest.mark.parametrize("decay,warmup,final", [("constant", 10, 0.0), ("cosine", 10, 0.0),
                                                ("cosine", 0, 0.1), ("linear", 25, 0.2)])
def test_schedule_follows_its_formula(decay, warmup, final):
  total = 100
  schedule = recipes.WarmupDecay(3e-3, warmup, decay, total if decay != "constant" else None,
                                 final)
  got = [float(schedule(t)) for t in range(0, 130, 3)]
  want = [_expected_rate(t, 3e-3, warmup, decay, total, final) for t in range(0, 130, 3)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)   # float32 arithmetic
  # Serialisable (the optimizer's config, .keras files).
  again = recipes.WarmupDecay(**schedule.get_config())
  assert float(again(37)) == float(schedule(37))


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="sgd"), "optimizer must be one of adam, adamax; got 'sgd'"),
    (dict(learning_rate=0.0), "learning_rate must be a finite number > 0; got 0.0"),
    (dict(warmup_steps=-1), "warmup_steps must be an integer >= 0; got -1"),
    (dict(decay="step"), "decay must be one of constant, cosine, linear; got 'step'"),
    (dict(decay="cosine", warmup_steps=10, decay_steps=10), "decay_steps must be an integer"),
    (dict(decay="linear"), "decay_steps must be an integer > warmup_steps (0)"),
    (dict(final_fraction=1.5, decay="cosine", decay_steps=5), "final_fraction must be in"),
    (dict(clip_norm=-1.0), "clip_norm must be None or a finite number > 0; got -1.0"),
    (dict(ema=1.0), "ema must be 0 (off) or a momentum in (0, 1); got 1.0"),
])
def test_bad_recipes_are_one_line_errors(kwargs, message):
  with pytest.raises(ValueError) as info:
    recipes.make_optimizer(**kwargs)
  assert message in str(info.value) and "\n" not in str(info.value)


def _model(**recipe):
  model = models.build_flow("realnvp", (2,), num_steps=2, hidden=8)
  model.compile(optimizer=recipes.make_optimizer(**recipe))
  model.initialize(data.toy_sample("moons", 256, seed=1))
  return model


class _Record(keras.callbacks.Callback):
  """The trainable weights after every step."""

  def __init__(self):
    super().__init__()
    self.weights = []

  def on_train_batch_end(self, batch, logs=None):
    self.weights.append([v.numpy().copy() for v in self.model.trainable_variables])


def _averages(model):
  return [a.numpy() for a in model.optimizer._model_variables_moving_average]


def test_ema_follows_its_recurrence_and_swaps_exactly():
  momentum = 0.9
  flow = data.load_data("moons", batch_size=32, seed=0)
  keras.utils.set_random_seed(0)
  model, record = _model(name="adamax", learning_rate=1e-2, ema=momentum), _Record()
  training.fit_steps(model, flow.train_from, steps=12, eval_every=5, callbacks=[record],
                     validation_data=flow.heldout.take(2), verbose=0)
  # w_ema(1) = w(1) (Keras starts the average at the first step), then the recurrence.
  expected = record.weights[0]
  for weights in record.weights[1:]:
    expected = [momentum * e + (1 - momentum) * w for e, w in zip(expected, weights)]
  for got, want in zip(_averages(model), expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The raw weights stay in the model after fit (Keras alone would overwrite them)...
  raw = [v.numpy() for v in model.trainable_variables]
  for got, want in zip(raw, record.weights[-1]):
    np.testing.assert_array_equal(got, want)
  assert any(not np.allclose(r, a) for r, a in zip(raw, _averages(model)))
  # ...and ema_weights swaps the averages in and the raw weights back, bit for bit.
  x = data.toy_sample("moons", 64, seed=3)
  with recipes.ema_weights(model):
    for v, a in zip(model.trainable_variables, _averages(model)):
      np.testing.assert_array_equal(v.numpy(), a)
    averaged_nll = -float(tf.reduce_mean(model.log_prob(x)))
  for v, r in zip(model.trainable_variables, raw):
    np.testing.assert_array_equal(v.numpy(), r)
  assert averaged_nll != -float(tf.reduce_mean(model.log_prob(x)))


def test_validation_with_ema_leaves_training_untouched():
  """Validation swaps the averages in and out: the run's weights are those of a run that
  never validated (Keras' SwapEMAWeights swaps by addition, which rounds)."""
  flow = data.load_data("moons", batch_size=32, seed=0)
  runs = []
  for validation in (flow.heldout.take(2), None):
    keras.utils.set_random_seed(0)
    model = _model(learning_rate=1e-2, ema=0.9)
    training.fit_steps(model, flow.train_from, steps=10, eval_every=3,
                       validation_data=validation, verbose=0)
    runs.append([v.numpy() for v in model.variables] + _averages(model))
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a, b)


def test_every_recipe_resumes_exactly(tmp_path):
  recipe = dict(name="adamax", learning_rate=5e-3, warmup_steps=4, decay="cosine",
                decay_steps=14, clip_norm=0.5, ema=0.8, schedule=True)
  flow = data.load_data("moons", batch_size=32, seed=0)
  keras.utils.set_random_seed(0)
  whole = _model(**recipe)
  training.fit_steps(whole, flow.train_from, steps=14, eval_every=5, verbose=0,
                     validation_data=flow.heldout.take(1))
  keras.utils.set_random_seed(0)
  first = _model(**recipe)
  training.fit_steps(first, flow.train_from, steps=8, eval_every=5, verbose=0,
                     validation_data=flow.heldout.take(1))
  FlowCheckpoint(first, tmp_path).save(8)
  keras.utils.set_random_seed(1)   # another process: nothing but the checkpoint carries over
  resumed = _model(**recipe)
  assert FlowCheckpoint(resumed, tmp_path).restore_latest() == 8
  training.fit_steps(resumed, flow.train_from, steps=14, eval_every=5, verbose=0,
                     validation_data=flow.heldout.take(1))
  for a, b in zip(whole.variables + whole.optimizer.variables,
                  resumed.variables + resumed.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_clipping_bounds_the_update():
  """Adam's first step moves each weight by about lr whatever the gradient's size, so the
  clipping is checked on the gradient the optimizer applies."""
  model = _model(clip_norm=1e-3)
  optimizer = model.optimizer
  assert optimizer.global_clipnorm == pytest.approx(1e-3)
  x = data.toy_sample("moons", 64, seed=3)
  with tf.GradientTape() as tape:
    loss = -tf.reduce_mean(model.log_prob(x))
  grads = tape.gradient(loss, model.trainable_variables)
  assert float(tf.linalg.global_norm(grads)) > 1e-2   # clipping has work to do
  clipped = optimizer._clip_gradients(grads)
  assert float(tf.linalg.global_norm(clipped)) == pytest.approx(1e-3, rel=1e-4)


def test_an_exception_during_validation_leaves_the_raw_weights():
  class _Boom(keras.callbacks.Callback):
    def on_test_batch_end(self, batch, logs=None):
      raise RuntimeError("boom")

  flow = data.load_data("moons", batch_size=32, seed=0)
  keras.utils.set_random_seed(0)
  model, record = _model(learning_rate=1e-2, ema=0.9), _Record()
  with pytest.raises(RuntimeError, match="boom"):
    training.fit_steps(model, flow.train_from, steps=6, eval_every=3, verbose=0,
                       validation_data=flow.heldout.take(2), callbacks=[record, _Boom()])
  for got, want in zip(model.trainable_variables, record.weights[-1]):
    np.testing.assert_array_equal(got.numpy(), want)


def test_cpu_has_bfloat16_reads_the_flags_line():
  zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
  avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: avx512_bf16_in_name_only\n"
  sapphire = "flags\t: fpu avx512f amx_bf16 amx_tile\n"
  assert recipes.cpu_has_bfloat16(zen4)
  assert recipes.cpu_has_bfloat16(sapphire)
  assert not recipes.cpu_has_bfloat16(avx2)
  assert recipes.cpu_has_bfloat16("") is None                    # nothing to read
  assert recipes.cpu_has_bfloat16("Features\t: fp asimd bf16\n") is None   # ARM: not read
  assert recipes.cpu_has_bfloat16() in (True, False, None)
