r"""Evaluates a trained flow on held-out data: NLL with intervals, bits/dim, samples.

  python -m trainers.evaluate --model_dir=/tmp/moons
  python -m trainers.evaluate --export_dir=/tmp/mnist_export --dataset=mnist \
      --batch_size=64 --output_dir=/tmp/mnist_eval

Over the `n` held-out examples `x_i` (the trainer's split, `FlowData.heldout`, with its
fixed dequantization noise, so two evaluations of one model agree exactly):

.. math::
    \mathrm{NLL} = \tfrac1n \textstyle\sum_i \ell_i, \quad \ell_i = -\log p(x_i), \qquad
    \mathrm{CI}_{95} = \mathrm{NLL} \pm 1.96\, s_\ell / \sqrt n, \qquad
    \mathrm{bits/dim} = \mathrm{NLL} / (D \ln 2),

`s_\ell` the sample standard deviation (ddof = 1) of the per-example NLLs and `D` the
number of dimensions of an event (bits/dim and its interval for images only).

Stochastic estimators (a CIF model's importance-sampled `log p_K(x)` with `K =
--num_importance_samples` draws; a residual flow whose evaluation log-det is the
Russian-roulette estimate, events of more than 16 entries) are named in the output, and
the whole evaluation is repeated `R = --repeats` times with different seeds: `\ell_{i,r}`
for `r = 1..R`. Then `\ell_i` above is the average over repeats (the data interval is
about the examples), and the estimator's own standard error is the spread of the mean over
repeats, `sd_r(\bar\ell_r) / \sqrt R`, reported separately. Exact models are evaluated once
and say "exact".

Neither the models nor the SavedModels take a seed for these estimates: they draw from
stateless seeds that are a counter in a saved seed state (Keras `SeedGenerator`s of the
residual and CIF layers' evaluation streams; the SavedModel's `tf.random.Generator`).
Repeat `r` sets every such state, in memory only, to a function of `(--seed, r)` first.

--model_dir is a trainer's --model_dir: the model is rebuilt from its run.json, its newest
good checkpoint restored, and evaluated (and sampled) with the moving-average weights of a
run trained with --ema, as the trainer's export is. --export_dir is a SavedModel of
`tfpflows.export` (no tfpflows model is built). --dataset defaults to the run's (required
with --export_dir) and is any of the trainer's forms (toy name, .npy, IDX file, TFDS name).
Image held-out batches are dequantized per batch, so the figures of an export match the
run's when --batch_size is the run's (default: the run's for --model_dir, 64 otherwise).

Written to --output_dir (default: --model_dir; required with --export_dir), each file
atomically and only after every input has been checked: `evaluation.json` (every figure),
and samples at --temperatures: `evaluation_samples.png` (images, one panel per
temperature) or `evaluation_samples_T<t>.png` (2D vectors, a scatter per temperature; other
vectors have no plot). Bad input is one line `error: ...` on stderr and exit status 2.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tfpflows import data as flow_data
from tfpflows import models
from tfpflows import plotting
from tfpflows import recipes
from tfpflows.checkpoint import FlowCheckpoint
from tfpflows.layers.residual import ResidualLayer
from tfpflows.models.cif_model import DEFAULT_NUM_SAMPLES
from trainers import train
from trainers.train import UsageError

RESULTS_FILE = "evaluation.json"
SAMPLES_FILE = "evaluation_samples"
TEMPERATURES = (0.5, 0.7, 1.0)
Z_95 = 1.96
EXPORT_BATCH_SIZE = 64        # the trainer's default --batch_size
PROGRESS_EVERY_S = 10.0       # a progress line this often when stdout is not a terminal
SAMPLE_STREAM = 1 << 20       # seed streams of the samples, apart from the repeats'


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """One evaluation; mirrors the command-line flags (see the module docstring)."""
  model_dir: Optional[str] = None
  export_dir: Optional[str] = None
  dataset: Optional[str] = None
  batch_size: Optional[int] = None
  data_dir: Optional[str] = None
  num_importance_samples: Optional[int] = None
  temperatures: tuple = TEMPERATURES
  num_samples: Optional[int] = None
  repeats: int = 3
  output_dir: Optional[str] = None
  n_bits: Optional[int] = None
  seed: int = 0


FLAGS = flags.FlagValues()   # apart from the trainer's flags (trainers.train defines its own)


def _define_flags(fv):
  d = EvalConfig.__dataclass_fields__
  flags.DEFINE_string("model_dir", None, "A trainers.train --model_dir to evaluate (its "
                      "run.json and newest good checkpoint).", flag_values=fv)
  flags.DEFINE_string("export_dir", None, "A SavedModel of tfpflows.export to evaluate "
                      "instead of --model_dir.", flag_values=fv)
  flags.DEFINE_string("dataset", None, "Held-out data: a toy density, a .npy or IDX file, or "
                      "a TFDS name (default: the run's; required with --export_dir).",
                      flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Examples per batch (default: the run's for "
                       f"--model_dir, {EXPORT_BATCH_SIZE} for --export_dir; image noise is "
                       "fixed per batch, so pass the run's to match its figures).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data folder (default: the run's, else TFDS's "
                      "own).", flag_values=fv)
  flags.DEFINE_integer("num_importance_samples", None, "CIF models: draws K of the "
                       "importance-sampled estimate (default: the run's; for an export its "
                       "log_prob's own).", lower_bound=1, flag_values=fv)
  flags.DEFINE_string("temperatures", ",".join(map(str, d["temperatures"].default)),
                      "Comma-separated sampling temperatures (> 0).", flag_values=fv)
  flags.DEFINE_integer("num_samples", None, "Samples per temperature (default: "
                       f"{train.NUM_SAMPLES_IMAGES} images, {train.NUM_SAMPLES_2D} 2D points; "
                       "0: no samples).", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("repeats", d["repeats"].default, "Stochastic estimators: whole "
                       "evaluations with different seeds, for the estimator's standard "
                       "error.", lower_bound=1, flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where evaluation.json and the samples go "
                      "(default: --model_dir; required with --export_dir).", flag_values=fv)
  flags.DEFINE_integer("n_bits", None, "Images: the bits per pixel the model was trained on "
                       "(the trainer's --n_bits; default: the run's for --model_dir, 8 for "
                       "--export_dir, whose SavedModel does not record it).", lower_bound=1,
                       upper_bound=8, flag_values=fv)
  flags.DEFINE_integer("seed", d["seed"].default, "Seed of the estimators' repeats and the "
                       "samples.", flag_values=fv)
  flags.DEFINE_boolean("help", False, "Show this help.", flag_values=fv)


_define_flags(FLAGS)


# --------------------------------------------------------------------------- validation


def parse_temperatures(text):
  """'0.5,0.7,1.0' -> (0.5, 0.7, 1.0); UsageError unless each is a finite number > 0."""
  expected = "a comma-separated list of finite numbers > 0 (e.g. 0.5,0.7,1.0)"
  try:
    values = tuple(float(t) for t in str(text).split(","))
  except ValueError:
    raise UsageError(f"--temperatures must be {expected}; got {text!r}") from None
  if not all(math.isfinite(t) and t > 0 for t in values):
    raise UsageError(f"--temperatures must be {expected}; got {text!r}")
  return values


def _validate(config):
  if bool(config.model_dir) == bool(config.export_dir):
    given = "both" if config.model_dir else "neither"
    raise UsageError(f"expected exactly one of --model_dir (a trainer's run) or --export_dir "
                     f"(a SavedModel); got {given}")
  if config.export_dir and not config.dataset:
    raise UsageError("--dataset is required with --export_dir (a SavedModel does not record "
                     "its data set)")
  if config.export_dir and not config.output_dir:
    raise UsageError("--output_dir is required with --export_dir (the SavedModel's folder is "
                     "not written to)")
  for name, low in (("batch_size", 1), ("num_importance_samples", 1), ("num_samples", 0)):
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < low):
      raise UsageError(f"--{name} must be an integer >= {low}; got {value!r}")
  if isinstance(config.repeats, bool) or not isinstance(config.repeats, int) \
      or config.repeats < 1:
    raise UsageError(f"--repeats must be an integer >= 1; got {config.repeats!r}")
  parse_temperatures(",".join(map(str, config.temperatures)) if config.temperatures else "")
  for flag, path in (("--model_dir", config.model_dir), ("--export_dir", config.export_dir)):
    if path and not os.path.isdir(os.path.expanduser(path)):
      what = "is not a directory" if os.path.exists(path) else "does not exist"
      raise UsageError(f"{flag} {path!r} {what}")
  train.check_writable_dir("--output_dir" if config.output_dir else "--model_dir",
                      config.output_dir or config.model_dir)


def _check_shape(config, model_shape, data):
  if model_shape is not None and tuple(model_shape) != tuple(data.event_shape):
    raise UsageError(f"--dataset {config.dataset!r} has events of shape "
                     f"{list(data.event_shape)}; the model's are {list(model_shape)}")


# --------------------------------------------------------------------------- seeds


def _stream_seed(seed, stream, index):
  """A seed in [0, 2**31) for stream `stream` (a repeat, or the samples) and state `index`."""
  entropy = [int(seed) % (1 << 32), int(stream), int(index)]
  return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def _is_keras_seed_state(v):
  path = getattr(v, "path", None) or v.name
  return "seed_generator_state" in path and tuple(v.shape) == (2,)


def _reseed(states, generators, seed, stream):
  """Sets every Keras seed state `[s, counter]` to `[s_i, 0]` and every `tf.random.Generator`
  state to one from `s_i`, `s_i` a function of `(seed, stream, i)`: the next draws are then
  those of stream `stream`, the same at every evaluation."""
  for i, v in enumerate(states):
    v.assign(tf.constant([_stream_seed(seed, stream, i), 0], tf.as_dtype(v.dtype)))
  for i, v in enumerate(generators):
    v.assign(tf.random.create_rng_state(_stream_seed(seed, stream, len(states) + i),
                                        "philox"))


# --------------------------------------------------------------------------- sources


def _residual_estimator(layers):
  """The name of the residual blocks' evaluation log-det, or None if it is exact."""
  stochastic = [l for l in layers if isinstance(l, ResidualLayer) and l.eval_logdet.stochastic]
  if not stochastic:
    return None
  e = stochastic[0].eval_logdet
  how = (f"{e.n_terms} exact terms, then a geometric tail with p={e.p}"
         if e.method == "roulette" else f"the first {e.n_terms} terms (biased)")
  return (f"{e.method} log-det estimate in {len(stochastic)} residual block(s) ({how}, "
          f"{e.num_probes} {e.probe} probe(s) per example)")


class _Run:
  """A trainer's --model_dir: its run's model, newest good checkpoint, EMA weights."""

  def __init__(self, config):
    overrides = {}
    if config.dataset:
      overrides["dataset"] = config.dataset
    if config.batch_size:
      overrides["batch_size"] = config.batch_size
    if config.data_dir:
      overrides["data_dir"] = config.data_dir
    if config.n_bits is not None:
      overrides["n_bits"] = config.n_bits
    run_config = train.config_from_run(config.model_dir)
    if config.num_importance_samples is not None:
      if run_config.model not in models.CIF_NAMES:
        raise UsageError(f"--num_importance_samples applies to the CIF models "
                         f"({', '.join(models.CIF_NAMES)}); the run in {config.model_dir} is "
                         f"a {run_config.model}")
      overrides["num_importance_samples"] = config.num_importance_samples
    self.run_config = run_config
    self.config = dataclasses.replace(run_config, **overrides)
    self.data = train.load_data(self.config)
    _check_shape(self.config, self._model_shape(), self.data)
    keras.utils.set_random_seed(config.seed)
    self.model = train.build_compiled_model(self.config, self.data.event_shape)
    checkpoints = os.path.join(config.model_dir, "checkpoints")
    try:
      ckpt = FlowCheckpoint(self.model, checkpoints)
      self.step = ckpt.restore_latest()
    except ValueError as e:
      if self.config.dataset != run_config.dataset:
        raise UsageError(f"--dataset {self.config.dataset!r} (events of shape "
                         f"{list(self.data.event_shape)}) does not fit the run's model: "
                         f"{e}") from None
      raise UsageError(str(e)) from None
    for path, reason in ckpt.skipped:
      print(f"warning: checkpoint {path} is corrupt ({reason}); skipping it", file=sys.stderr)
    if self.step is None:
      raise UsageError(f"--model_dir {config.model_dir!r} holds no checkpoint (expected "
                       f"{checkpoints}/ckpt-*); train it first")
    self.checkpoint = ckpt.restored
    self.is_cif = isinstance(self.model, models.CIFModel)
    self.num_importance_samples = self.model.default_num_samples if self.is_cif else None
    k = self.num_importance_samples
    if self.is_cif:
      log_prob = lambda x: self.model.log_prob(x, k)
    else:
      log_prob = lambda x: self.model.log_prob(x)
    self._log_prob = tf.function(log_prob, reduce_retracing=True)
    self._sample = tf.function(
        lambda n, t, s: self.model.sample(n, temperature=t, seed=s), reduce_retracing=True)
    self._states = [v for v in self.model.variables if _is_keras_seed_state(v)]
    self.estimators = [e for e in (
        _importance_name(k) if self.is_cif else None,
        _residual_estimator(self.model._flatten_layers(recursive=True))) if e]  # pylint: disable=protected-access

  def _model_shape(self):
    """The run's event shape, where it can be known cheaply; None otherwise."""
    saved = train.read_run_file(self.run_config.model_dir) or {}
    if saved.get("event_shape"):
      return tuple(saved["event_shape"])
    if self.config.dataset == self.run_config.dataset:
      return None                     # the run's own data: its shape by construction
    dataset = self.run_config.dataset or ""
    if dataset in flow_data.TOY_NAMES or os.path.isfile(dataset):
      return train.load_data(self.run_config).event_shape
    return None   # a TFDS set: the checkpoint's shapes are checked on restore instead

  def describe(self):
    ema = f", EMA {self.config.ema} weights" if recipes.uses_ema(self.model) else ""
    return (f"--model_dir={self.config.model_dir} ({self.config.model}, "
            f"{os.path.basename(self.checkpoint)}, step {self.step}{ema})")

  def source(self):
    return dict(model_dir=self.config.model_dir, model=self.config.model,
                checkpoint=self.checkpoint, step=self.step,
                ema=float(self.config.ema) if recipes.uses_ema(self.model) else None)

  def weights(self):
    return recipes.ema_weights(self.model)

  def reseed(self, seed, stream):
    _reseed(self._states, [], seed, stream)

  def log_prob(self, x):
    return self._log_prob(x).numpy()

  def sample(self, n, temperature, seed, index):
    s = tf.constant([_stream_seed(seed, SAMPLE_STREAM, index), 0], tf.int32)
    return self._sample(n, tf.constant(temperature, tf.float32), s).numpy()


def _importance_name(k):
  k = "the export's default K" if k is None else f"K={k}"
  return f"importance-sampled log p_K(x) = log (1/K sum_k w_k), {k}"


class _Export:
  """A SavedModel of `tfpflows.export`, called through its functions only."""

  def __init__(self, config):
    path = config.export_dir
    if not tf.saved_model.contains_saved_model(path):
      raise UsageError(f"--export_dir {path!r} is not a SavedModel (no saved_model.pb); "
                       "expected the --export_dir of a trainers.train run")
    try:
      self.loaded = tf.saved_model.load(path)
    except Exception as e:  # pylint: disable=broad-except  (any unreadable SavedModel)
      line = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise UsageError(f"--export_dir {path!r} cannot be loaded as a SavedModel ({line})") \
          from None
    if "log_prob" not in self.loaded.signatures or not hasattr(self.loaded, "log_prob"):
      raise UsageError(f"--export_dir {path!r} is a SavedModel without a log_prob function; "
                       "expected an export of tfpflows.export")
    self.config = train.Config(model=None, dataset=config.dataset, model_dir=None,
                               export_dir=path,
                               batch_size=config.batch_size or EXPORT_BATCH_SIZE,
                               data_dir=config.data_dir, seed=config.seed,
                               n_bits=config.n_bits or 8)
    self.is_cif = hasattr(self.loaded, "log_prob_k")
    if config.num_importance_samples is not None and not self.is_cif:
      raise UsageError(f"--num_importance_samples applies to the CIF models; the SavedModel "
                       f"in {path} has no log_prob_k (it is not a CIF model)")
    spec = self.loaded.signatures["log_prob"].structured_input_signature[1]
    self.event_shape = tuple(next(iter(spec.values())).shape[1:])
    self.data = train.load_data(self.config)
    _check_shape(self.config, self.event_shape, self.data)
    variables = {id(v): v for v in tf.train.TrackableView(self.loaded).descendants()
                 if isinstance(v, tf.Variable)}.values()
    self._states = [v for v in variables if _is_keras_seed_state(v)]
    self._generators = [v for v in variables if v.name.startswith("StateVar")
                        and v.dtype == tf.int64 and tuple(v.shape) == (3,)]
    self._residual = any("eval_logdet_seed" in v.name for v in self._states)
    self.num_importance_samples = config.num_importance_samples
    self.estimators = []
    self.seedable = bool(self._states or self._generators)

  def probe(self, seed, x):
    """Names the estimator: found by calling it (an export records only a CIF model's K)."""
    if self.is_cif:
      if self.num_importance_samples is None:
        self.num_importance_samples = self._default_k(seed, x[:8])
      self.estimators.append(_importance_name(self.num_importance_samples))
      return
    values = []
    for stream in (0, 1):
      self.reseed(seed, stream)
      values.append(self._plain_log_prob(x))
    if not np.array_equal(values[0], values[1]):
      self.estimators.append("stochastic log-det estimate of a residual flow (its log_prob "
                             "changes with the seed state)" if self._residual else
                             "an unnamed stochastic estimate (log_prob changes with the "
                             "seed state)")

  def _default_k(self, seed, x):
    """The K of the export's `log_prob`, or None if it cannot be told.

    Exports record it (`default_num_samples`); for older ones, candidates (the `[K]`
    constant of the tiling in its log_prob graph, the library's default for this data)
    are each verified by calling
    `log_prob` and `log_prob_k(K)` from the same seed state, which agree only for its K.
    """
    recorded = getattr(self.loaded, "default_num_samples", None)
    if recorded is not None:                 # exports since 2026-12-04 record it
      return int(recorded.numpy())
    kind = "image" if self.data.is_image else "vector"
    candidates = dict.fromkeys(_tile_constants(self.loaded.signatures["log_prob"])
                               + [DEFAULT_NUM_SAMPLES[kind]])
    self.reseed(seed, 0)
    default = self._plain_log_prob(x)
    for k in candidates:
      self.reseed(seed, 0)
      with_k = self.loaded.log_prob_k(tf.constant(x), tf.constant(k, tf.int32)).numpy()
      if np.allclose(default, with_k, rtol=1e-6, atol=1e-6):
        return k
    return None

  def describe(self):
    return f"--export_dir={self.config.export_dir}"

  def source(self):
    return dict(export_dir=self.config.export_dir)

  def weights(self):
    return contextlib.nullcontext()

  def reseed(self, seed, stream):
    _reseed(self._states, self._generators, seed, stream)

  def _plain_log_prob(self, x):
    return self.loaded.log_prob(tf.constant(x)).numpy()

  def log_prob(self, x):
    if self.is_cif and self.num_importance_samples is not None:
      return self.loaded.log_prob_k(tf.constant(x), tf.constant(self.num_importance_samples,
                                                                tf.int32)).numpy()
    return self._plain_log_prob(x)

  def sample(self, n, temperature, seed, index):
    self.reseed(seed, SAMPLE_STREAM + index)
    return self.loaded.sample(tf.constant(n, tf.int32),
                              tf.constant(temperature, tf.float32)).numpy()


def _tile_constants(function):
  """Positive `K` of `Tile(x, concat([[K], ones]))` nodes in `function`'s graph (the tiling
  of `CIFModel.log_weights`), as candidates only."""
  try:
    from tensorflow.python.framework import tensor_util  # pylint: disable=g-import-not-at-top
    found = []
    for f in function.graph.as_graph_def().library.function:
      nodes = {n.name: n for n in f.node_def}
      for tile in (n for n in f.node_def if n.op == "Tile"):
        multiples = nodes.get(tile.input[1].split(":")[0])
        if multiples is None or multiples.op != "ConcatV2":
          continue
        first = nodes.get(multiples.input[0].split(":")[0])
        if first is not None and first.op == "Const":
          value = tensor_util.MakeNdarray(first.attr["value"].tensor)
          if value.shape == (1,) and int(value[0]) >= 1:
            found.append(int(value[0]))
    return found
  except Exception:  # pylint: disable=broad-except  (a hint only: verified by the caller)
    return []


# --------------------------------------------------------------------------- evaluation


class _Progress:
  """A Keras progress bar over batches on a terminal, else a line every few seconds."""

  def __init__(self, total, label):
    self.total, self.label, self.done = total, label, 0
    self.bar = None
    if sys.stdout.isatty():
      print(label)
      self.bar = keras.utils.Progbar(total, unit_name="batch")
    self.last = time.monotonic()

  def update(self):
    self.done += 1
    if self.bar is not None:
      self.bar.update(self.done)
    elif time.monotonic() - self.last >= PROGRESS_EVERY_S:
      self.last = time.monotonic()
      total = f"/{self.total}" if self.total else ""
      print(f"{self.label}: batch {self.done}{total}", flush=True)


def _per_example_nll(source, heldout, repeats, seed):
  """`[R, n]` per-example NLLs, repeat `r` from seed stream `r` (one pass over `heldout`
  each: its batches are the same at every pass)."""
  total = int(heldout.cardinality())
  out = []
  for r in range(repeats):
    source.reseed(seed, r)
    label = "evaluating" + (f" (repeat {r + 1}/{repeats})" if repeats > 1 else "")
    progress = _Progress(total if total >= 0 else None, label)
    values = []
    for x in heldout:
      values.append(-np.asarray(source.log_prob(x.numpy()), np.float64))
      progress.update()
    out.append(np.concatenate(values))
  return np.stack(out)


def summarize(nll, *, num_dims, is_image, stochastic):
  """The figures of `nll` `[R, n]` (repeats by examples); see the module docstring."""
  repeats, n = nll.shape
  per_example = nll.mean(axis=0)
  mean = float(per_example.mean())
  se = float(per_example.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  figures = dict(num_examples=int(n), nll=mean, nll_se=se,
                 nll_ci95=[mean - Z_95 * se, mean + Z_95 * se],
                 num_nonfinite=int(np.sum(~np.isfinite(per_example))))
  means = nll.mean(axis=1)
  if stochastic:
    figures["repeats"] = int(repeats)
    figures["repeat_nll"] = [float(m) for m in means]
    figures["estimator_se"] = (float(means.std(ddof=1) / math.sqrt(repeats)) if repeats > 1
                               else None)
  else:
    figures["repeats"], figures["estimator_se"] = 1, 0.0
  if is_image:
    scale = 1.0 / (num_dims * math.log(2.0))
    figures["bits_per_dim"] = mean * scale
    figures["bits_per_dim_ci95"] = [v * scale for v in figures["nll_ci95"]]
    figures["bits_per_dim_se"] = se * scale
    if figures["estimator_se"] is not None:
      figures["bits_per_dim_estimator_se"] = figures["estimator_se"] * scale
  return figures


def _samples(source, config, data):
  """`{temperature: samples}`, or `(None, note)` when these events have no plot."""
  shape = tuple(data.event_shape)
  if not data.is_image and shape != (2,):
    return None, f"no sample plot for vectors of shape {list(shape)} (only images and 2D)"
  n = config.num_samples
  if n is None:
    n = train.NUM_SAMPLES_IMAGES if data.is_image else train.NUM_SAMPLES_2D
  if n == 0:
    return None, "--num_samples=0: no samples"
  return {t: source.sample(n, t, config.seed, i)
          for i, t in enumerate(config.temperatures)}, None


def _replace_into(path, write):
  """`write(tmp)` then `os.replace(tmp, path)`: readers never see a partial file."""
  base, ext = os.path.splitext(os.path.basename(path))
  tmp = os.path.join(os.path.dirname(path), f".{base}.tmp-{os.getpid()}{ext}")
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _write_samples(samples, output_dir, data, title):
  if data.is_image:
    path = os.path.join(output_dir, f"{SAMPLES_FILE}.png")
    panels = {f"T={t:g}": s for t, s in samples.items()}
    return [plotting.save_image_grid(panels, path, title=f"samples: {title}")]  # atomic
  paths = []
  for t, s in samples.items():
    path = os.path.join(output_dir, f"{SAMPLES_FILE}_T{t:g}.png")
    paths.append(plotting.plot_samples_2d(s, path, reference=data.reference,
                                          title=f"samples at T={t:g}: {title}"))
  return paths


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def run(config):
  """Validates `config`, evaluates, writes the samples and `evaluation.json`.

  Returns the dict written to `evaluation.json` (NaN/Inf as None), plus the per-example
  NLLs `[R, n]` under `"per_example_nll"` (not written).

  Raises:
    UsageError: bad input, found before anything is written.
  """
  _validate(config)
  source = _Run(config) if config.model_dir else _Export(config)
  data = source.data
  first = next(iter(data.heldout), None)
  if first is None:
    raise UsageError(f"--dataset {source.config.dataset!r} has no held-out examples")
  output_dir = config.output_dir or config.model_dir
  num_dims = int(np.prod(data.event_shape))
  print(f"evaluating {source.describe()} on {source.config.dataset} "
        f"(batch size {source.config.batch_size})")

  with source.weights():
    if isinstance(source, _Export):
      source.probe(config.seed, first.numpy())
    stochastic = bool(source.estimators)
    repeats = config.repeats if stochastic else 1
    nll = _per_example_nll(source, data.heldout, repeats, config.seed)
    samples, note = _samples(source, config, data)

  figures = summarize(nll, num_dims=num_dims, is_image=data.is_image, stochastic=stochastic)
  n_bits = getattr(source.config, "n_bits", 8)
  if data.is_image and n_bits != 8:
    figures["bits_per_dim_n_bits"] = figures["bits_per_dim"] - (8 - n_bits)
  estimator = "; ".join(source.estimators) if stochastic else "exact"
  seedable = getattr(source, "seedable", True)
  results = dict(source=source.source(), dataset=source.config.dataset,
                 batch_size=source.config.batch_size, event_shape=list(data.event_shape),
                 num_dims=num_dims, is_image=bool(data.is_image), estimator=estimator,
                 stochastic=stochastic,
                 num_importance_samples=source.num_importance_samples if source.is_cif
                 else None, seed=config.seed, **figures,
                 temperatures=list(config.temperatures), samples=[], samples_note=note)
  if stochastic and not seedable:
    results["seed_note"] = ("the SavedModel holds no seed state this command can set: "
                            "repeats are successive calls from its saved state, and "
                            "--seed has no effect")

  # Every input has been checked; the files go in now.
  os.makedirs(output_dir, exist_ok=True)
  if samples is not None:
    title = os.path.basename(str(source.config.dataset))
    results["samples"] = _write_samples(samples, output_dir, data, title)
  results = _json_safe(results)
  results["results_file"] = _replace_into(
      os.path.join(output_dir, RESULTS_FILE),
      lambda tmp: _dump(results, tmp))
  _report(results, note)
  results["per_example_nll"] = nll
  return results


def _dump(results, path):
  with open(path, "w") as f:
    json.dump(results, f, indent=1)
    f.write("\n")


def _fmt(value, digits=4):
  return "n/a" if value is None else f"{value:.{digits}f}"


def _report(r, note):
  ci = r["nll_ci95"]
  print(f"held-out NLL: {_fmt(r['nll'])} nats, 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}] "
        f"(n={r['num_examples']})")
  if r["is_image"]:
    ci = r["bits_per_dim_ci95"]
    print(f"bits/dim:     {_fmt(r['bits_per_dim'])}, 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]")
  if r["num_nonfinite"]:
    print(f"warning: {r['num_nonfinite']} held-out examples have a non-finite "
          "log-likelihood", file=sys.stderr)
  print(f"estimator:    {r['estimator']}")
  if r["stochastic"]:
    se = r["estimator_se"]
    print(f"              over {r['repeats']} repeats: NLL {_fmt(r['nll'])} +- {_fmt(se)} "
          "nats (the estimator's standard error"
          + ("; needs --repeats >= 2)" if se is None else ")"))
  for path in r["samples"]:
    print(f"samples:      {path}")
  if note:
    print(f"samples:      {note}")
  print(f"results:      {r['results_file']}")


# --------------------------------------------------------------------------- command line


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """Parses this command's flags (one line and exit status 2 on error); the trainer's
  global absl flags keep their defaults."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).strip().splitlines()[0])
  if FLAGS.help:
    print(__doc__)
    print(FLAGS.module_help(sys.modules[__name__]) or FLAGS.get_help())
    sys.exit(0)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(argv[:1])
  return rest


def config_from_flags():
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(EvalConfig)
            if f.name != "temperatures"}
  return EvalConfig(temperatures=parse_temperatures(FLAGS.temperatures), **values)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  tf.get_logger().setLevel("ERROR")
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run(config_from_flags())
  except UsageError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
