"""The library side of never losing work: the step-indexed data stream, `fit_steps`, the
callbacks, sample weights, unbatched events and the separate evaluation seed stream."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows import data, models, training
from tfpflows.checkpoint import FlowCheckpoint, NonFiniteError


def _batches(ds, n):
  return np.stack([b.numpy() for b in ds.take(n)])


@pytest.mark.parametrize("kind", ["images", "vectors", "toy"])
def test_the_stream_is_a_pure_function_of_the_step(tmp_path, kind):
  rng = np.random.RandomState(0)
  if kind == "toy":
    flow = data.load_data("rings", batch_size=8, seed=5)
  else:
    array = (rng.randint(0, 256, (23, 4, 4, 1)).astype(np.uint8) if kind == "images"
             else rng.randn(23, 3).astype(np.float32))
    np.save(tmp_path / "a.npy", array)
    flow = data.load_data(str(tmp_path / "a.npy"), batch_size=8, seed=5)
  full = _batches(flow.train_from(0), 12)
  for start in (1, 5, 11):
    np.testing.assert_array_equal(_batches(flow.train_from(start), 12 - start), full[start:])
  again = data.load_data("rings", batch_size=8, seed=5) if kind == "toy" else data.load_data(
      str(tmp_path / "a.npy"), batch_size=8, seed=5)
  np.testing.assert_array_equal(_batches(again.train, 12), full)   # a fresh process's view
  if kind == "vectors":
    # 21 training rows, batches of 8 cut from epochs back to back: each epoch a permutation.
    rows = full.reshape(-1, 3)[:63]
    train = array[:21]
    for e in range(3):
      epoch = rows[21 * e:21 * (e + 1)]
      assert sorted(map(tuple, epoch)) == sorted(map(tuple, train))
    assert not np.array_equal(rows[:21], rows[21:42])   # reshuffled each epoch


def _model():
  model = models.build_flow("realnvp", (2,), num_steps=2, hidden=8)
  model.compile(optimizer=keras.optimizers.Adam(1e-2))
  model.initialize(data.toy_sample("moons", 256, seed=1))
  return model


class _Steps(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.epoch_ends, self.fits = [], 0

  def on_train_begin(self, logs=None):
    self.fits += 1

  def on_epoch_end(self, epoch, logs=None):
    self.epoch_ends.append(training.steps_done(self.model))


def test_fit_steps_aligns_epochs_to_eval_every_and_resumes_exactly(tmp_path):
  flow = data.load_data("moons", batch_size=32, seed=0)
  keras.utils.set_random_seed(0)
  whole, steps = _model(), _Steps()
  training.fit_steps(whole, flow.train_from, steps=23, eval_every=10, callbacks=[steps],
                     verbose=0)
  assert steps.epoch_ends == [10, 20, 23] and steps.fits == 2  # 2 whole epochs, then 3 steps

  keras.utils.set_random_seed(0)
  first = _model()
  ckpt = FlowCheckpoint(first, tmp_path / "ckpt")
  training.fit_steps(first, flow.train_from, steps=7, eval_every=10, verbose=0)
  ckpt.save(7)
  keras.utils.set_random_seed(0)
  resumed, steps = _model(), _Steps()
  assert FlowCheckpoint(resumed, tmp_path / "ckpt").restore_latest() == 7
  training.fit_steps(resumed, flow.train_from, steps=23, eval_every=10, callbacks=[steps],
                     verbose=0)
  assert steps.epoch_ends == [10, 20, 23]
  for a, b in zip(whole.variables, resumed.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_periodic_checkpoint_and_non_finite_guard(tmp_path):
  flow = data.load_data("moons", batch_size=32, seed=0)
  model = _model()
  ckpt = FlowCheckpoint(model, tmp_path / "ckpt", max_to_keep=10)
  training.fit_steps(model, flow.train_from, steps=12, eval_every=5, verbose=0,
                     callbacks=[training.PeriodicCheckpoint(ckpt, 4)])
  assert [int(p.rsplit("-", 1)[1]) for p in ckpt._manager.checkpoints] == [4, 8, 12]
  model.optimizer.learning_rate.assign(1e6)
  with pytest.raises(NonFiniteError, match=r"training diverged at step 1[3-9]"):
    training.fit_steps(model, flow.train_from, steps=40, eval_every=40, verbose=0,
                       callbacks=[training.TerminateOnNonFinite(),
                                  training.PeriodicCheckpoint(ckpt, 1)])
  saved = [int(p.rsplit("-", 1)[1]) for p in ckpt._manager.checkpoints]
  assert all(FlowCheckpoint(_model(), tmp_path / "ckpt")._verify(p) is None
             for p in ckpt._manager.checkpoints), saved
  from tfpflows.checkpoint import all_finite  # pylint: disable=g-import-not-at-top
  if not all_finite(model.variables):
    with pytest.raises(NonFiniteError, match="not finite at step 99"):
      ckpt.save(99)
    assert ckpt._manager.checkpoints[-1].endswith(f"-{saved[-1]}")


def test_sample_weight_weights_the_nll():
  model = _model()
  x = data.toy_sample("moons", 8, seed=3)
  w = tf.constant([0., 1., 2., 0., 1., 3., 0.5, 0.5])
  nll = -model.log_prob(x)
  loss = model.compute_loss(x, None, -nll, sample_weight=w)
  np.testing.assert_allclose(loss.numpy(), np.mean(w.numpy() * nll.numpy()), rtol=1e-6)
  # Through fit: zero weights are ignored examples, so the step equals one on the others.
  a, b = _model(), _model()
  for v_a, v_b in zip(a.variables, b.variables):
    v_b.assign(v_a)
  keep = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
  x_np = x.numpy()
  a.fit(x_np, sample_weight=keep.astype("float32") * 2.0, batch_size=8, epochs=1, verbose=0,
        shuffle=False)
  b.fit(x_np[keep], batch_size=4, epochs=1, verbose=0, shuffle=False)
  for v_a, v_b in zip(a.trainable_variables, b.trainable_variables):
    np.testing.assert_allclose(v_a.numpy(), v_b.numpy(), atol=1e-6)


@pytest.mark.parametrize("name", models.NAMES)
def test_unbatched_events_work_for_every_model(name):
  model = models.build_flow(name, (2,), num_steps=1, hidden=8)
  x = data.toy_sample("moons", 4, seed=0)
  batched = model.log_prob(x).numpy()
  np.testing.assert_allclose(model.log_prob(x[1]).numpy(), batched[1], rtol=1e-5, atol=1e-5)
  assert model.log_prob(x[1]).shape == ()
  np.testing.assert_allclose(model.log_prob(tf.reshape(x, [2, 2, 2])).numpy(),
                             batched.reshape(2, 2), rtol=1e-5, atol=1e-5)
  assert model.encode(x[0]).shape == (2,) and model.decode(x[0]).shape == (2,)


def test_evaluation_does_not_move_the_training_seed_stream():
  model = models.build_flow("resflow", (8, 8, 1), num_levels=1, num_steps=1, hidden=4)
  layer = next(l for l in model._flatten_layers() if hasattr(l, "eval_seed_generator"))
  before = layer.seed_generator.state.numpy().copy()
  model.log_prob(tf.random.uniform([2, 8, 8, 1], 0, 256))   # stochastic evaluation log-det
  np.testing.assert_array_equal(layer.seed_generator.state.numpy(), before)
  assert not np.array_equal(layer.eval_seed_generator.state.numpy(), before)


class _SendSignal(keras.callbacks.Callback):
  """Sends this process `signum` (`times` times) at the end of step `at`."""

  def __init__(self, signum, at, times=1):
    super().__init__()
    self.signum, self.at, self.times = signum, at, times

  def on_train_batch_end(self, batch, logs=None):
    if training.steps_done(self.model) == self.at:
      for _ in range(self.times):
        os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_step_reached_and_raises(tmp_path, signum):
  flow = data.load_data("moons", batch_size=32, seed=0)
  model = _model()
  ckpt = FlowCheckpoint(model, tmp_path / "ckpt")
  previous = signal.getsignal(signum)
  with pytest.raises(training.Interrupted) as info:
    with training.interruptible(ckpt) as on_signal:
      training.fit_steps(model, flow.train_from, steps=50, eval_every=20, verbose=0,
                         callbacks=[_SendSignal(signum, 7), on_signal])
  assert info.value.step == 7 and info.value.exit_code == {signal.SIGTERM: 143,
                                                           signal.SIGINT: 130}[signum]
  assert info.value.checkpoint == ckpt.latest and ckpt.latest.endswith("ckpt-7")
  assert signal.getsignal(signum) is previous   # handlers restored on the way out
  assert "run the same command to resume" in str(info.value)


def test_a_second_ctrl_c_aborts_and_the_latest_checkpoint_stays_whole(tmp_path):
  flow = data.load_data("moons", batch_size=32, seed=0)
  model = _model()
  ckpt = FlowCheckpoint(model, tmp_path / "ckpt")
  with pytest.raises(KeyboardInterrupt):
    with training.interruptible(ckpt) as on_signal:
      training.fit_steps(model, flow.train_from, steps=50, eval_every=20, verbose=0,
                         callbacks=[training.PeriodicCheckpoint(ckpt, 5),
                                    _SendSignal(signal.SIGINT, 8, times=2), on_signal])
  assert ckpt.latest.endswith("ckpt-5")
  restored = _model()
  assert FlowCheckpoint(restored, tmp_path / "ckpt").restore_latest() == 5
