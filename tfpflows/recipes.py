r"""Training recipes of the flow papers: optimizer, learning-rate schedule, clipping, EMA.

`make_optimizer(...)` returns a Keras 3 optimizer for `model.compile(optimizer=...)`:

* **Adam** (Kingma & Ba 2015; RealNVP, Glow's code, Residual Flows, CIF) or **Adamax**
  (Adam with the infinity norm, `v_t = max(beta_2 v_{t-1}, |g_t|)`; Glow's paper and
  normflows' Glow example).
* **Learning rate** `lr(t) = lr_0 * min(1, (t + 1) / W) * d(t)` at step `t` (0-based): a
  linear warm-up over `W = warmup_steps` (Glow warms up over its first epochs, Residual
  Flows over its first 1,000 steps), then a decay `d`: `"constant"` (`d = 1`), `"cosine"`
  (`d = m + (1 - m)(1 + cos(pi s)) / 2`) or `"linear"` (`d = 1 - (1 - m) s`), with
  `s = min(1, (t - W) / (T - W))` over the run's `T = decay_steps` and `m = final_fraction`.
  The schedule is a pure function of the optimizer's step: a resumed run continues it.
* **Gradient-norm clipping** (Glow, Residual Flows): the gradient of all weights rescaled to
  global norm at most `clip_norm` (`global_clipnorm`).
* **Exponential moving average** of the weights (Residual Flows evaluates with one, decay
  0.999): `w_ema <- m w_ema + (1 - m) w` after each step, kept by the optimizer (so
  `FlowCheckpoint` saves and restores it). Training keeps updating the raw weights;
  `ema_weights(model)` swaps the averages in for evaluation, sampling and export, and
  `tfpflows.training.fit_steps` keeps Keras from overwriting the raw weights at the end of
  `fit` (which `keras.Model.fit` does for `use_ema` optimizers), so resumed runs stay exact.

What each costs (README "Training recipes"): on the small MNIST Glow of `glow_mnist_cpu`,
interleaved rounds gave 3.05 steps/s plain, 3.02 with the EMA and 2.93 with warm-up,
cosine decay and clipping together, within the rounds' own spread (about 15%). What each
gains in held-out bits/dim was not measured here.
"""

import contextlib
import math

import keras
import numpy as np
import tensorflow as tf

__all__ = ["OPTIMIZERS", "DECAYS", "WarmupDecay", "make_optimizer", "ema_weights",
           "uses_ema", "learning_rate_at", "cpu_has_bfloat16"]

# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: AVX512-BF16 dot products
# (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids) and AMX's bfloat16 tiles.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo=None):
  """Whether this x86 CPU computes bfloat16 natively (`BF16_CPU_FLAGS` among its flags).

  `mixed_bfloat16` conditioners pay on such CPUs (a 2-core AMD EPYC with AVX512-BF16 ran the
  MNIST Glow at 1.55x its float32 steps/s) and cost on others, where oneDNN emulates
  bfloat16 (an AVX2 CPU ran 4.3x slower).

  Args:
    cpuinfo: the text of Linux's `/proc/cpuinfo`; None reads the file.

  Returns:
    True or False from the x86 `flags` lines; None when it cannot tell (no readable
    `/proc/cpuinfo`, or no x86 `flags` line: other systems and ARM CPUs, whose bfloat16
    support this does not read).
  """
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return None
  flags, seen = set(), False
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "flags":
      seen = True
      flags.update(value.split())
  if not seen:
    return None
  return any(flag in flags for flag in BF16_CPU_FLAGS)

OPTIMIZERS = ("adam", "adamax")
DECAYS = ("constant", "cosine", "linear")


@keras.saving.register_keras_serializable(package="tfpflows")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """`lr(t) = lr_0 * min(1, (t + 1) / W) * d(t)`: linear warm-up, then a decay (see module).

  Args:
    learning_rate: `lr_0`, the peak rate (> 0).
    warmup_steps: `W >= 0`; 0 starts at the peak.
    decay: `"constant"`, `"cosine"` or `"linear"`.
    decay_steps: `T`, the step at which the decay reaches `final_fraction` (the run's
      length); needed (> `warmup_steps`) unless `decay` is `"constant"`.
    final_fraction: `m` in `[0, 1]`, the fraction of `lr_0` left at step `T`.
  """

  def __init__(self, learning_rate, warmup_steps=0, decay="constant", decay_steps=None,
               final_fraction=0.0):
    super().__init__()
    _check_schedule(learning_rate, warmup_steps, decay, decay_steps, final_fraction)
    self.learning_rate = float(learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.decay = decay
    self.decay_steps = None if decay_steps is None else int(decay_steps)
    self.final_fraction = float(final_fraction)

  def __call__(self, step):
    t = tf.cast(step, tf.float32)
    lr = tf.constant(self.learning_rate, tf.float32)
    if self.warmup_steps > 0:
      lr = lr * tf.minimum(1.0, (t + 1.0) / float(self.warmup_steps))
    if self.decay == "constant":
      return lr
    span = float(self.decay_steps - self.warmup_steps)
    s = tf.clip_by_value((t - float(self.warmup_steps)) / span, 0.0, 1.0)
    m = self.final_fraction
    if self.decay == "cosine":
      d = m + (1.0 - m) * 0.5 * (1.0 + tf.cos(math.pi * s))
    else:
      d = 1.0 - (1.0 - m) * s
    return lr * d

  def get_config(self):
    return dict(learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                decay=self.decay, decay_steps=self.decay_steps,
                final_fraction=self.final_fraction)


def _check_schedule(learning_rate, warmup_steps, decay, decay_steps, final_fraction):
  if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate)
          and learning_rate > 0):
    raise ValueError(f"learning_rate must be a finite number > 0; got {learning_rate!r}")
  if not (isinstance(warmup_steps, (int, np.integer)) and warmup_steps >= 0):
    raise ValueError(f"warmup_steps must be an integer >= 0; got {warmup_steps!r}")
  if decay not in DECAYS:
    raise ValueError(f"decay must be one of {', '.join(DECAYS)}; got {decay!r}")
  if decay != "constant" and not (isinstance(decay_steps, (int, np.integer))
                                  and decay_steps > warmup_steps):
    raise ValueError(f"decay_steps must be an integer > warmup_steps ({warmup_steps}) for "
                     f"decay={decay!r}; got {decay_steps!r}")
  if not (isinstance(final_fraction, (int, float)) and 0.0 <= final_fraction <= 1.0):
    raise ValueError(f"final_fraction must be in [0, 1]; got {final_fraction!r}")


def make_optimizer(name="adam", learning_rate=1e-3, *, warmup_steps=0, decay="constant",
                   decay_steps=None, final_fraction=0.0, clip_norm=None, ema=0.0,
                   schedule=False):
  """A Keras 3 optimizer for one of the papers' recipes (see the module for the formulas).

  Args:
    name: `"adam"` or `"adamax"` (Keras defaults otherwise: betas 0.9 / 0.999, eps 1e-7).
    learning_rate: the peak learning rate `lr_0`.
    warmup_steps, decay, decay_steps, final_fraction: the schedule (`WarmupDecay`); with
      no warm-up and `"constant"` the learning rate is a plain float variable (what
      `optimizer.learning_rate.assign` expects).
    clip_norm: None, or the largest global norm of the gradient (> 0).
    ema: 0 for none, else the moving average's momentum `m` in `(0, 1)` (e.g. 0.999).
    schedule: always a `WarmupDecay` schedule, even a constant one (the trainer's choice:
      the optimizer's variables then do not depend on the schedule, so a resumed run may
      change it).

  Raises:
    ValueError: one line naming the argument, what was expected and what came.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
  _check_schedule(learning_rate, warmup_steps, decay, decay_steps, final_fraction)
  if clip_norm is not None and not (isinstance(clip_norm, (int, float))
                                    and math.isfinite(clip_norm) and clip_norm > 0):
    raise ValueError(f"clip_norm must be None or a finite number > 0; got {clip_norm!r}")
  if not (isinstance(ema, (int, float)) and (ema == 0 or 0 < ema < 1)):
    raise ValueError(f"ema must be 0 (off) or a momentum in (0, 1); got {ema!r}")
  rate = (float(learning_rate) if warmup_steps == 0 and decay == "constant" and not schedule else
          WarmupDecay(learning_rate, warmup_steps, decay, decay_steps, final_fraction))
  cls = keras.optimizers.Adam if name == "adam" else keras.optimizers.Adamax
  kwargs = dict(learning_rate=rate, global_clipnorm=clip_norm)
  if ema:
    kwargs.update(use_ema=True, ema_momentum=float(ema), ema_overwrite_frequency=None)
  return cls(**kwargs)


def _inner(optimizer):
  return getattr(optimizer, "inner_optimizer", optimizer)   # LossScaleOptimizer


def uses_ema(model):
  """Whether `model`'s optimizer keeps a moving average of the weights."""
  optimizer = getattr(model, "optimizer", None)
  return optimizer is not None and bool(getattr(_inner(optimizer), "use_ema", False))


def learning_rate_at(optimizer, step):
  """The learning rate the optimizer uses at `step` (a float), schedule or not."""
  rate = _inner(optimizer).learning_rate
  schedule = getattr(_inner(optimizer), "_learning_rate", None)
  if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
    return float(schedule(step))
  return float(keras.ops.convert_to_numpy(rate))


def _swap_in_averages(model):
  """Assigns the averages to the trainable weights; returns a function restoring them.

  Exact (the raw values are kept as copies, not recovered by arithmetic as Keras'
  `SwapEMAWeights` does, which rounds). None when there is no built average.
  """
  optimizer = _inner(model.optimizer) if getattr(model, "optimizer", None) else None
  if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
    return None
  averages = getattr(optimizer, "_model_variables_moving_average", None)
  if not averages:
    return None
  variables = optimizer._trainable_variables   # pylint: disable=protected-access
  pairs = [(v, a) for v, a in zip(variables, averages) if a is not None]
  raw = [tf.identity(v.value if hasattr(v, "value") else v) for v, _ in pairs]
  for v, a in pairs:
    v.assign(a.value if hasattr(a, "value") else a)

  def restore():
    for (v, _), value in zip(pairs, raw):
      v.assign(value)
  return restore


@contextlib.contextmanager
def ema_weights(model):
  """Within the block, `model`'s trainable weights hold their moving averages.

  Use it to evaluate, sample, plot or export the averaged model (as Residual Flows
  evaluates); on leaving, the raw weights return exactly, so training (or a checkpoint)
  continues where it was. Does nothing when the optimizer keeps no average or has not
  been built.
  """
  restore = _swap_in_averages(model)
  try:
    yield model
  finally:
    if restore is not None:
      restore()


class EMAValidation(keras.callbacks.Callback):
  """Validation inside `fit` with the moving-average weights: swapped in at
  `on_test_begin`, the raw weights restored exactly at `on_test_end`."""

  def __init__(self):
    super().__init__()
    self._restore = None

  def on_test_begin(self, logs=None):
    if self._restore is None:
      self._restore = _swap_in_averages(self.model)

  def on_test_end(self, logs=None):
    if self._restore is not None:
      self._restore()
      self._restore = None


@contextlib.contextmanager
def keep_raw_weights(model):
  """Within the block, `fit` leaves the raw weights in place at its end.

  `keras.Model.fit` ends with `optimizer.finalize_variable_values`, which for an EMA
  optimizer overwrites the weights with their averages: training resumed from there would
  continue from the averages, not from where it was. `fit_steps` calls `fit` inside this.
  """
  optimizer = _inner(model.optimizer) if getattr(model, "optimizer", None) else None
  if optimizer is None or not getattr(optimizer, "use_ema", False):
    yield
    return
  optimizer.finalize_variable_values = lambda var_list: None
  try:
    yield
  finally:
    del optimizer.finalize_variable_values   # the class's method again
