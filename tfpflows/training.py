"""Training that never loses work: step-exact resume, checkpoints, interrupts, NaN guards.

For `model.fit` in a notebook as much as for `trainers/train.py`, which only wires these:

* `fit_steps(model, train_from, steps=..., eval_every=...)` trains from the optimizer's
  current step to `steps` with `model.fit`, in epochs of `eval_every` steps aligned to
  multiples of `eval_every` (a run resumed mid-epoch first finishes that epoch), feeding
  `train_from(step)`, a data stream that is a pure function of the step
  (`tfpflows.data.FlowData.train_from`). With a restored `FlowCheckpoint` the resumed run
  therefore sees the batches, dequantization noise and estimator seeds the uninterrupted
  run saw, and ends with the same weights.
* `PeriodicCheckpoint(checkpoint, every)` saves every `every` steps, independent of
  evaluation.
* `TerminateOnNonFinite()` stops at the first non-finite loss with `NonFiniteError`, before
  any later callback can checkpoint it; `FlowCheckpoint.save` and `export_saved_model`
  refuse non-finite weights in any case.
* `interruptible(checkpoint)` turns SIGTERM (a scheduler's preemption notice) and SIGINT
  (Ctrl-C) into a checkpoint at the current step and an `Interrupted` exception; a second
  Ctrl-C aborts at once (the latest checkpoint stays the previous whole one: TF writes the
  `checkpoint` index last).
* `TensorBoardScalars` and `FlowHealth`: epoch logs and health figures (residual blocks,
  CIF layers) as TensorBoard scalars at the training step reached.
"""

import contextlib
import math
import os
import signal
import threading

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfpflows import recipes
from tfpflows.checkpoint import NonFiniteError

__all__ = [
    "fit_steps", "steps_done", "PeriodicCheckpoint", "TerminateOnNonFinite", "Interrupted",
    "interruptible", "TensorBoardScalars", "FlowHealth", "ResidualHealth", "NonFiniteError",
]

def steps_done(model):
  """The training step reached: the optimizer's `iterations`."""
  return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


# --------------------------------------------------------------------------- the loop


def fit_steps(model, train_from, *, steps, eval_every, validation_data=None, callbacks=(),
              verbose="auto"):
  """`model.fit` from the current step to `steps`, epochs aligned to `eval_every`.

  Epoch `k` covers steps `(k - 1) * eval_every + 1 ... min(k * eval_every, steps)` whatever
  step training starts from: a run resumed at step `s` first trains to the next multiple of
  `eval_every` (a shorter epoch), then whole epochs, then the remainder to `steps`. Keras
  evaluates `validation_data` and runs the callbacks' `on_epoch_end` at the same steps as
  in a run that was never interrupted.

  Args:
    model: a compiled `FlowModel` (restored from a checkpoint or freshly initialised).
    train_from: `step -> tf.data.Dataset` of the training batches from batch `step` on.
    steps: the total number of training steps of the run.
    eval_every: steps per epoch (evaluation and epoch-end callbacks).
    validation_data, callbacks, verbose: passed to `model.fit`.

  Returns:
    The merged `History.history` dict of the `fit` calls (empty if nothing was left to do).

  With an EMA optimizer (`recipes.make_optimizer(ema=...)`) validation uses the averaged
  weights and the raw weights stay in the model after `fit` (see `recipes.ema_weights`).
  """
  if steps < 0 or eval_every < 1:
    raise ValueError(f"fit_steps: steps must be >= 0 and eval_every >= 1; got {steps} and "
                     f"{eval_every}")
  history = {}
  callbacks = list(callbacks)
  if validation_data is not None and recipes.uses_ema(model):
    callbacks.insert(0, recipes.EMAValidation())   # held-out figures of the averaged weights
  start = steps_done(model)
  while start < steps:
    epoch = start // eval_every
    if start % eval_every or steps - start < eval_every:
      per_epoch = min(eval_every - start % eval_every, steps - start)
      epochs = epoch + 1
    else:
      per_epoch, epochs = eval_every, epoch + (steps - start) // eval_every
    try:
      with recipes.keep_raw_weights(model):
        result = model.fit(train_from(start), steps_per_epoch=per_epoch, epochs=epochs,
                           initial_epoch=epoch, validation_data=validation_data,
                           callbacks=callbacks, verbose=verbose, shuffle=False)
    finally:   # an exception inside validation: the raw weights back in any case
      for callback in callbacks:
        if isinstance(callback, recipes.EMAValidation):
          callback.on_test_end()
    for key, values in result.history.items():
      history.setdefault(key, []).extend(values)
    reached = steps_done(model)
    if reached != start + per_epoch * (epochs - epoch) or model.stop_training:
      break   # a callback stopped training early (EarlyStopping and the like)
    start = reached
  return history


# --------------------------------------------------------------------------- callbacks


class PeriodicCheckpoint(keras.callbacks.Callback):
  """Saves `checkpoint` (a `FlowCheckpoint`) every `every` training steps.

  Steps count as the optimizer's `iterations`, so the schedule continues across resumes.
  `FlowCheckpoint.save` refuses non-finite weights (`NonFiniteError`, which stops `fit`).
  """

  def __init__(self, checkpoint, every):
    super().__init__()
    if every < 1:
      raise ValueError(f"PeriodicCheckpoint: every must be >= 1; got {every}")
    self.checkpoint, self.every = checkpoint, int(every)

  def on_train_batch_end(self, batch, logs=None):
    step = steps_done(self.model)
    if step % self.every == 0:
      self.checkpoint.save(step)


class TerminateOnNonFinite(keras.callbacks.Callback):
  """Stops `fit` with `NonFiniteError` at the first step whose loss or metrics are not finite.

  Keras' own `TerminateOnNaN` only sets `stop_training` and lets the epoch's other callbacks
  run (a checkpoint of NaN weights, say); this raises at once. Put it before any callback
  that saves. The error's message names the step and what to try.
  """

  def __init__(self, hint="lower the learning rate"):
    super().__init__()
    self.hint = hint

  def on_train_batch_end(self, batch, logs=None):
    for key, value in (logs or {}).items():
      try:
        value = float(value)
      except (TypeError, ValueError):
        continue
      if not math.isfinite(value):
        step = steps_done(self.model)
        raise NonFiniteError(f"training diverged at step {step}: {key} is {value}; "
                             f"{self.hint}")


class Interrupted(Exception):
  """Training stopped by a signal after saving a checkpoint at the step reached.

  Attributes: `signum`, `step`, `checkpoint` (the path written), `exit_code` (128 + signum:
  130 for SIGINT, 143 for SIGTERM).
  """

  def __init__(self, signum, step, checkpoint):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    self.exit_code = 128 + int(signum)
    super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {checkpoint}; "
                     "run the same command to resume")


class _SaveOnSignal(keras.callbacks.Callback):
  """Checks for a pending signal after every step (and epoch) and saves and raises."""

  def __init__(self, guard):
    super().__init__()
    self._guard = guard

  def _check(self):
    signum = self._guard.pending
    if signum is not None:
      step = steps_done(self.model)
      path = self._guard.checkpoint.save(step)
      raise Interrupted(signum, step, path)

  def on_train_batch_end(self, batch, logs=None):
    self._check()

  def on_epoch_end(self, epoch, logs=None):
    self._check()


class _Guard:
  def __init__(self, checkpoint):
    self.checkpoint, self.pending = checkpoint, None
    self.callback = _SaveOnSignal(self)

  def handle(self, signum, frame):
    del frame
    if self.pending is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt   # a second Ctrl-C: abort now (mid-save leaves the old latest)
    self.pending = signum


@contextlib.contextmanager
def interruptible(checkpoint, signals=(signal.SIGTERM, signal.SIGINT)):
  """Context in which `signals` save `checkpoint` at the current step and raise `Interrupted`.

  Yields a Keras callback to pass to `fit` (or `fit_steps`); the handlers are installed for
  the duration of the context (main thread only; elsewhere the context does nothing). The
  signal is acted on at the end of the running step, so the checkpoint is a consistent
  state. A signal that arrives outside `fit` but inside the context is acted on at the
  next step; `Interrupted` is raised out of `fit`.
  """
  guard = _Guard(checkpoint)
  if threading.current_thread() is not threading.main_thread():
    yield guard.callback
    return
  previous = {s: signal.signal(s, guard.handle) for s in signals}
  try:
    yield guard.callback
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


_SCALARS = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class TensorBoardScalars(keras.callbacks.Callback):
  """Writes each epoch's logs as TensorBoard scalars at the training step reached, to
  <log_dir>/train and <log_dir>/validation (`keras.callbacks.TensorBoard`'s layout).

  `keras.callbacks.TensorBoard` needs the `tensorboard` package, which TF 2.21 no longer
  installs; `tf.summary.write` with the scalars plugin's metadata is core TensorFlow.
  """

  def __init__(self, log_dir):
    super().__init__()
    self._log_dir, self._writers = log_dir, {}

  def on_train_begin(self, logs=None):
    self._writers = {split: tf.summary.create_file_writer(os.path.join(self._log_dir, split))
                     for split in ("train", "validation")}

  def on_epoch_end(self, epoch, logs=None):
    step = steps_done(self.model)
    for name, value in (logs or {}).items():
      split, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
      with self._writers[split].as_default():
        tf.summary.write(tag, tf.constant(float(value)), step=step, metadata=_SCALARS)
    for writer in self._writers.values():
      writer.flush()

  def on_train_end(self, logs=None):
    for writer in self._writers.values():
      writer.close()


class FlowHealth(keras.callbacks.Callback):
  """After each epoch, the model's health figures on a held-out batch (`model.diagnostics`).

  Residual blocks (`FlowModel.diagnostics`): each block's Lipschitz bound, sampled series
  length, spread of the log-det estimate, and the fixed-point inverse's iterations and
  residual. CIF models (`CIFModel.diagnostics`): per layer the gap `log q(u|h) - log p(u|z)`,
  and the effective sample size of the evaluation's importance weights (`ess`, and
  `ess_fraction` of `K`). Every figure goes to TensorBoard (<log_dir>/diagnostics, tags
  "<layer>/<figure>"); the worst or mean over layers joins the epoch's logs, so the
  progress line and the train scalars show them. Does nothing for flows with nothing to
  report. (Diagnostics draw from the evaluation seed streams: they never shift the
  training seeds.)
  """

  _SUMMARY = (("lipschitz", max, "lipschitz_max"), ("series_terms", None, "series_terms"),
              ("logdet_std", None, "logdet_std"), ("inverse_iterations", max, "inverse_iters"),
              ("inverse_residual", max, "inverse_residual"), ("u_gap", None, "u_gap"))
  _GLOBAL = ("ess", "ess_fraction")

  def __init__(self, batch, log_dir):
    super().__init__()
    self._batch, self._log_dir, self._writer = batch, log_dir, None

  def on_epoch_end(self, epoch, logs=None):
    report = self.model.diagnostics(self._batch)
    if not report:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self._log_dir, "diagnostics"))
    step = steps_done(self.model)
    with self._writer.as_default():
      for tag, value in report.items():
        tf.summary.write(tag, tf.constant(value), step=step, metadata=_SCALARS)
    self._writer.flush()
    if logs is None:
      return
    for figure, reduce, key in self._SUMMARY:
      values = [v for k, v in report.items() if k.endswith("/" + figure)]
      if values:
        logs[key] = reduce(values) if reduce else sum(values) / len(values)
    for key in self._GLOBAL:
      if key in report:
        logs[key] = report[key]

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


ResidualHealth = FlowHealth   # the earlier name
