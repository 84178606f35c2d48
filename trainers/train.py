r"""Trains a flow on a 2D toy density, a .npy file or a TFDS image set, and exports it.

  python -m trainers.train --model=realnvp --dataset=moons --steps=2000 \
      --batch_size=256 --model_dir=/tmp/moons --export_dir=/tmp/moons_export

  python -m trainers.train --model=glow --dataset=mnist --steps=20000 --batch_size=64 \
      --num_levels=2 --model_dir=/tmp/mnist --export_dir=/tmp/mnist_export

--model is a flow of `tfpflows.models.NAMES` or a continuously indexed flow
(cif-resflow, cif-realnvp, cif-glow; vectors and images), trained by its ELBO and evaluated
by the importance-sampled estimate with --num_importance_samples draws (default 100 for
vectors, 10 for images).

--dataset is a toy density name, a path ending in .npy ([N, d] float vectors or
[N, H, W, C] uint8 images), an IDX file as MNIST is distributed (e.g.
t10k-images-idx3-ubyte.gz, gzip or not; the last 10% of the images held out, as for .npy),
or a TFDS name. Training runs `model.fit` in epochs of
--eval_every steps; after each it evaluates the held-out data and logs to TensorBoard
(<model_dir>/tensorboard). Checkpoints go to <model_dir>/checkpoints every
--checkpoint_every steps and at the end (the last 3 are kept). At the end the model is
exported as a SavedModel to --export_dir and plots are written to --model_dir.

Runs never lose work (`tfpflows.training`):
* The same command again resumes from the newest good checkpoint, exactly: the data stream,
  dequantization noise and estimator seeds are functions of the step, so the resumed run
  ends with the weights of an uninterrupted one. A corrupt latest checkpoint is skipped for
  the previous one, with a warning.
* SIGTERM (preemption) or Ctrl-C saves a checkpoint at the current step, prints one line
  and exits with 143 or 130. A second Ctrl-C aborts; the latest checkpoint stays whole.
* A non-finite loss stops the run at that step with one line and exit status 3; no
  non-finite weights are checkpointed or exported.

Recipes (`tfpflows.recipes`): --optimizer (adam, adamax), --learning_rate with
--warmup_steps and --lr_decay (constant, cosine, linear to 0 at --steps), --clip_norm, --ema
(evaluation, plots and export use the averaged weights), --precision, --n_bits, and
--learn_top (Glow's learned top prior). --config=NAME sets a paper's architecture and recipe
(`trainers.configs`); flags given beside it override it. `python -m trainers.evaluate`
evaluates a finished run or a SavedModel.

Bad input (flags, data, paths, a checkpoint of another model or other run settings) is
reported as one line on stderr with exit status 2, before anything is written.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tfpflows import data as flow_data
from tfpflows import export
from tfpflows import models
from tfpflows import plotting
from tfpflows import recipes
from tfpflows import training
from tfpflows.checkpoint import FlowCheckpoint
from trainers import configs

MODELS = models.NAMES + models.CIF_NAMES
NUM_SAMPLES_2D = 4096
NUM_SAMPLES_IMAGES = 36
TEMPERATURES = (0.7, 1.0)
KEEP_CHECKPOINTS = 3
# mixed_float16 is not offered: loss scaling skips the steps whose gradients overflow, the
# optimizer's step then lags the batches, and the step-indexed data stream and exact resume
# (tfpflows.training) rest on the two being equal.
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run; mirrors the command-line flags."""
  model: Optional[str]
  dataset: Optional[str]
  model_dir: Optional[str]
  export_dir: Optional[str]
  steps: int = 1000
  batch_size: int = 64
  data_dir: Optional[str] = None
  learning_rate: float = 1e-3
  eval_every: int = 500
  checkpoint_every: int = 250
  num_levels: Optional[int] = None
  num_steps: Optional[int] = None
  hidden: Optional[int] = None
  num_importance_samples: Optional[int] = None
  optimizer: str = "adam"
  warmup_steps: int = 0
  lr_decay: str = "constant"
  clip_norm: Optional[float] = None
  ema: float = 0.0
  precision: str = "float32"
  n_bits: int = 8
  learn_top: bool = False
  config: Optional[str] = None
  overwrite: bool = False
  seed: int = 0


class UsageError(Exception):
  """Bad input, reported as one line; raised before anything is written."""


def _define_flags():
  d = Config.__dataclass_fields__  # defaults live in Config only
  flags.DEFINE_string("model", None, f"Flow: one of {', '.join(MODELS)}.")
  flags.DEFINE_string("dataset", None,
                      f"A toy density ({', '.join(flow_data.TOY_NAMES)}), a path ending in "
                      ".npy, an IDX file (*-idx3-ubyte[.gz], as MNIST), or a TFDS dataset "
                      "name.")
  flags.DEFINE_integer("steps", d["steps"].default, "Training steps in total.", lower_bound=1)
  flags.DEFINE_integer("batch_size", d["batch_size"].default, "Examples per step.",
                       lower_bound=1)
  flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs and plots; a run "
                      "resumes from the latest checkpoint here.")
  flags.DEFINE_string("export_dir", None, "Where the SavedModel is written.")
  flags.DEFINE_string("data_dir", None, "TFDS data folder (default: TFDS's own).")
  flags.DEFINE_float("learning_rate", d["learning_rate"].default, "Adam learning rate (a "
                     "resumed run uses the value given now).")
  flags.DEFINE_integer("eval_every", d["eval_every"].default, "Steps between held-out "
                       "evaluations (Keras epochs).", lower_bound=1)
  flags.DEFINE_integer("checkpoint_every", d["checkpoint_every"].default, "Steps between "
                       "checkpoints (the last 3 are kept; one is also written at the end "
                       "and on SIGTERM or Ctrl-C).", lower_bound=1)
  flags.DEFINE_integer("num_levels", None, "Multi-scale levels (default: per model).",
                       lower_bound=1)
  flags.DEFINE_integer("num_steps", None, "Flow steps per level (default: per model).",
                       lower_bound=1)
  flags.DEFINE_integer("hidden", None, "Hidden width of the coupling networks (default: "
                       "per model).", lower_bound=1)
  flags.DEFINE_integer("num_importance_samples", None, "CIF models: importance samples K of "
                       "the log-likelihood estimate used in evaluation, plots and the "
                       "SavedModel's log_prob (default: 100 for vectors, 10 for images).",
                       lower_bound=1)
  flags.DEFINE_string("config", None, "A preset of a paper's architecture and recipe "
                      f"({', '.join(configs.NAMES)}); flags given beside it override it.")
  flags.DEFINE_enum("optimizer", d["optimizer"].default, list(recipes.OPTIMIZERS),
                    "Adam, or Adamax (Glow's).")
  flags.DEFINE_integer("warmup_steps", d["warmup_steps"].default, "Linear learning-rate "
                       "warm-up over the first steps (0: none).", lower_bound=0)
  flags.DEFINE_enum("lr_decay", d["lr_decay"].default, list(recipes.DECAYS),
                    "Learning-rate decay after the warm-up, to 0 at --steps.")
  flags.DEFINE_float("clip_norm", None, "Clip the gradient to this global norm (default: "
                     "no clipping).")
  flags.DEFINE_float("ema", d["ema"].default, "Momentum of an exponential moving average of "
                     "the weights used for evaluation, plots and export (0: off; e.g. 0.999).")
  flags.DEFINE_enum("precision", d["precision"].default, list(PRECISIONS),
                    "float32, or the conditioner networks in bfloat16; flows, log-dets "
                    "and weights stay float32 (measure: bfloat16 is slower on CPUs "
                    "without AVX512-BF16).")
  flags.DEFINE_integer("n_bits", d["n_bits"].default, "Images: keep the top n bits of each "
                       "pixel (Glow's CelebA-HQ uses 5); bits/dim are then reported per "
                       "n-bit pixel.", lower_bound=1, upper_bound=8)
  flags.DEFINE_boolean("learn_top", d["learn_top"].default, "Glow, RealNVP, NICE on images: "
                       "a learned per-element prior of the top level's latent (Glow's "
                       "learntop).")
  flags.DEFINE_boolean("overwrite", d["overwrite"].default, "Replace an existing "
                       "--export_dir.")
  flags.DEFINE_integer("seed", d["seed"].default, "Seed of the weights, the data stream "
                       "and the samples.")


_define_flags()
FLAGS = flags.FLAGS


# --------------------------------------------------------------------------- validation


def _checked(fn, *args, **kwargs):
  """Calls a library function, turning its one-line ValueError into a UsageError."""
  try:
    return fn(*args, **kwargs)
  except training.NonFiniteError:
    raise
  except (ValueError, FileExistsError) as e:
    raise UsageError(str(e)) from None


def _validate_config(config):
  if config.model is None:
    raise UsageError(f"--model is required; expected one of {', '.join(MODELS)}")
  if config.model not in MODELS:
    raise UsageError(f"unknown --model {config.model!r}; expected one of {', '.join(MODELS)}")
  for name in ("dataset", "model_dir", "export_dir"):
    if not getattr(config, name):
      raise UsageError(f"--{name} is required")
  if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
    raise UsageError(f"--learning_rate must be a finite number > 0; got {config.learning_rate}")
  if config.clip_norm is not None and not (math.isfinite(config.clip_norm)
                                           and config.clip_norm > 0):
    raise UsageError(f"--clip_norm must be a finite number > 0; got {config.clip_norm}")
  if not (config.ema == 0 or 0 < config.ema < 1):
    raise UsageError(f"--ema must be 0 (off) or a momentum in (0, 1); got {config.ema}")
  if config.lr_decay != "constant" and config.steps <= config.warmup_steps:
    raise UsageError(f"--lr_decay={config.lr_decay} decays from --warmup_steps="
                     f"{config.warmup_steps} to --steps={config.steps}; need --steps > "
                     "--warmup_steps")
  if config.warmup_steps > config.steps:
    print(f"warning: --warmup_steps={config.warmup_steps} is longer than --steps="
          f"{config.steps}: the learning rate never reaches --learning_rate", file=sys.stderr)
  for name, allowed in (("optimizer", recipes.OPTIMIZERS), ("lr_decay", recipes.DECAYS),
                        ("precision", PRECISIONS)):
    if getattr(config, name) not in allowed:
      raise UsageError(f"--{name} must be one of {', '.join(allowed)}; got "
                       f"{getattr(config, name)!r}")
  _validate_paths(config)


def _inside(path, folder):
  return os.path.commonpath([path, folder]) == folder


def _validate_paths(config):
  """--model_dir and --export_dir: apart, creatable, writable; checked without writing."""
  model_dir = os.path.realpath(os.path.expanduser(config.model_dir))
  export_dir = os.path.realpath(os.path.expanduser(config.export_dir))
  if model_dir == export_dir:
    raise UsageError(f"--export_dir and --model_dir are the same folder ({model_dir}); the "
                     "export would replace the checkpoints: give them different paths")
  if _inside(export_dir, model_dir):
    raise UsageError(f"--export_dir {config.export_dir!r} is inside --model_dir "
                     f"{config.model_dir!r}; give them separate paths")
  if _inside(model_dir, export_dir):
    raise UsageError(f"--model_dir {config.model_dir!r} is inside --export_dir "
                     f"{config.export_dir!r} (which an export replaces); give them separate "
                     "paths")
  for flag, path in (("--model_dir", model_dir), ("--export_dir", export_dir)):
    check_writable_dir(flag, path)
  if os.path.exists(export_dir) and not config.overwrite:
    raise UsageError(f"--export_dir {config.export_dir!r} already exists; pass --overwrite "
                     "to replace it")


def check_writable_dir(flag, path):
  """`path` is, or can be created as, a writable folder; checked without writing."""
  path = os.path.realpath(os.path.expanduser(path))
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise UsageError(f"{flag} {path!r} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
      raise UsageError(f"{flag} {path!r} is not writable")
    return
  ancestor = os.path.dirname(path)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UsageError(f"{flag} {path!r} cannot be created: {ancestor!r} is a file, not a "
                     "directory")
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise UsageError(f"{flag} {path!r} cannot be created: {ancestor!r} is not writable")


def _validate_batch_size(config, event_shape):
  """ActNorm's init needs >= 2 values per channel in the first batch."""
  per_channel = config.batch_size * math.prod(event_shape[:-1])
  if per_channel < 2:
    raise UsageError(f"--batch_size={config.batch_size} is too small to initialise ActNorm "
                     "on vectors; need --batch_size >= 2")


def _build_model(config, event_shape):
  kwargs = {k: getattr(config, k) for k in ("num_levels", "num_steps", "hidden",
                                             "num_importance_samples")
            if getattr(config, k) is not None}
  if config.learn_top:
    kwargs["learn_top"] = True
  return _checked(models.build_flow, config.model, event_shape=event_shape, seed=config.seed,
                  **kwargs)


def make_optimizer(config):
  """The run's optimizer: `recipes.make_optimizer` from the flags (a schedule always, so
  the optimizer's variables do not depend on the schedule)."""
  optimizer = _checked(
      recipes.make_optimizer, config.optimizer, config.learning_rate,
      warmup_steps=config.warmup_steps, decay=config.lr_decay,
      decay_steps=config.steps if config.lr_decay != "constant" else None,
      clip_norm=config.clip_norm, ema=config.ema, schedule=True)
  return optimizer


@contextlib.contextmanager
def precision_policy(precision):
  """Keras' global dtype policy set to `precision` within the block (models built there
  keep it: the conditioners compute in it, the flows stay float32). Warns (stderr) when
  it is bfloat16 on an x86 CPU known to emulate it and no GPU is visible."""
  if (precision == "mixed_bfloat16" and not tf.config.list_physical_devices("GPU")
      and recipes.cpu_has_bfloat16() is False):
    print("warning: --precision=mixed_bfloat16 on a CPU without AVX512-BF16 or AMX: "
          "bfloat16 is emulated there and typically several times slower than float32",
          file=sys.stderr)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def build_compiled_model(config, event_shape):
  """The run's model, built and compiled as `run` does (for resuming and evaluation)."""
  with precision_policy(config.precision):
    model = _build_model(config, event_shape)
    model.compile(optimizer=make_optimizer(config))
  return model


# --------------------------------------------------------------------------- training


RUN_FILE = "run.json"   # the settings a resumed run must share with the run it continues
RUN_KEYS = ("model", "dataset", "batch_size", "seed", "num_levels", "num_steps", "hidden",
            "optimizer", "ema", "precision", "n_bits", "learn_top")
# What may change on resume (the schedule follows): learning_rate, warmup_steps, lr_decay,
# clip_norm, steps, eval_every, checkpoint_every, num_importance_samples.
EXIT_DIVERGED = 3


def _checkpoint_dir(config):
  return os.path.join(config.model_dir, "checkpoints")


def _restore(config, model):
  """Restores the newest good checkpoint in model_dir, if any; returns `(checkpoint, step)`.

  Checks the run's recorded settings (`run.json`) against `config` first. Writes nothing.
  """
  _check_run_file(config)
  ckpt = _checked(FlowCheckpoint, model, _checkpoint_dir(config), max_to_keep=KEEP_CHECKPOINTS)
  step = _checked(ckpt.restore_latest)
  for path, reason in ckpt.skipped:
    print(f"warning: checkpoint {path} is corrupt ({reason}); skipping it", file=sys.stderr)
  if step is not None:
    saved = read_run_file(config.model_dir) or {}
    keys = SCHEDULE_KEYS if config.lr_decay != "constant" else SCHEDULE_KEYS[:-1]
    changed = [f"--{key}={getattr(config, key)} (was {saved[key]})" for key in keys
               if key in saved and saved[key] != getattr(config, key)]
    if changed:
      print(f"learning-rate schedule: using {', '.join(changed)} from here on")
  return ckpt, step


SCHEDULE_KEYS = ("learning_rate", "warmup_steps", "lr_decay", "clip_norm", "steps")


def read_run_file(model_dir):
  """The settings recorded by the run in `model_dir` (`run.json`), or None if there is none.

  Raises:
    UsageError: the file is unreadable.
  """
  path = os.path.join(model_dir, RUN_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot read {path} ({str(e).splitlines()[0]}); move it away to start "
                     "over") from None
  return saved


def _run_settings(config):
  return {key: getattr(config, key) for key in RUN_KEYS}


def _check_run_file(config):
  saved = read_run_file(config.model_dir)
  if saved is None:
    return
  for key, value in _run_settings(config).items():
    default = Config.__dataclass_fields__[key].default
    if key not in saved and default is dataclasses.MISSING:
      continue
    if saved.get(key, default) != value:   # a key a run before it existed had at its default
      raise UsageError(f"--{key}={value} differs from the run in {config.model_dir} "
                       f"(--{key}={saved.get(key, default)}); resuming needs the same "
                       f"--{key}, or use a new --model_dir")


def _write_run_file(config, event_shape):
  """Records every setting of the run (`dataclasses.asdict(config)`) and the data's
  `event_shape`, the strict settings (`RUN_KEYS`) checked on resume; rewritten atomically
  at each start."""
  path = os.path.join(config.model_dir, RUN_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(dict(dataclasses.asdict(config), event_shape=list(event_shape)), f, indent=1)
  os.replace(tmp, path)


def config_from_run(model_dir, **overrides):
  """The `Config` of the run recorded in `model_dir` (its `run.json`), with `overrides`.

  Raises:
    UsageError: no run.json (not a trainer's --model_dir) or an unreadable one.
  """
  saved = read_run_file(model_dir)
  if saved is None:
    raise UsageError(f"--model_dir {model_dir!r} holds no {RUN_FILE}; expected the "
                     "--model_dir of a trainers.train run")
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in saved.items() if k in fields}
  values.update(model_dir=model_dir, **overrides)
  for name in ("dataset", "export_dir", "model"):
    values.setdefault(name, None)
  return Config(**values)


CIF_GRID_SIZE = 100   # a CIF density costs K model passes per point
CIF_PLOT_CHUNK = 1000


def _in_chunks(fn, size):
  def chunked(x):
    return np.concatenate([np.asarray(fn(x[i:i + size])) for i in range(0, len(x), size)])
  return chunked


def _write_plots(config, data, model):
  paths, name = [], os.path.basename(config.dataset)
  if data.is_image:
    samples = {f"T={t}": model.sample(NUM_SAMPLES_IMAGES, temperature=t, seed=config.seed)
               for t in TEMPERATURES}
    paths.append(plotting.save_image_grid(samples, os.path.join(config.model_dir,
                                                                "samples.png"),
                                          title=f"{config.model} samples, {name}"))
  elif data.event_shape == (2,):
    title = f"{config.model} on {name}"
    log_prob, grid_size = model.log_prob, 200
    if isinstance(model, models.CIFModel):   # K importance samples per grid point
      title += f" (importance-sampled, K={model.default_num_samples})"
      log_prob, grid_size = _in_chunks(model.log_prob, CIF_PLOT_CHUNK), CIF_GRID_SIZE
    paths.append(plotting.plot_density_2d(
        log_prob, os.path.join(config.model_dir, "density.png"), grid_size=grid_size,
        reference=data.reference, title=f"density: {title}"))
    paths.append(plotting.plot_samples_2d(
        model.sample(NUM_SAMPLES_2D, seed=config.seed),
        os.path.join(config.model_dir, "samples.png"),
        reference=data.reference, title=f"samples: {title}"))
  return paths


def load_data(config):
  """`tfpflows.data.load_data` for the run's dataset flags."""
  kwargs = dict(n_bits=config.n_bits) if config.n_bits != 8 else {}
  return _checked(flow_data.load_data, config.dataset, batch_size=config.batch_size,
                  seed=config.seed, data_dir=config.data_dir, **kwargs)


def run(config):
  """Validates `config`, trains (resuming from model_dir), exports and plots.

  Returns a dict of results.

  Raises:
    UsageError: bad input, found before any file or folder is created.
    training.Interrupted: SIGTERM or SIGINT during training, after saving a checkpoint.
    training.NonFiniteError: the loss or the weights went non-finite; nothing exported.
  """
  # Validation: nothing is written until all of it has passed.
  _validate_config(config)
  data = load_data(config)
  _validate_batch_size(config, data.event_shape)
  keras.utils.set_random_seed(config.seed)
  model = build_compiled_model(config, data.event_shape)
  checkpoint, step = _restore(config, model)
  if step is None:
    print("initialising ActNorm on the first batch")
    # A stream of its own: the training stream below starts afresh at step 0.
    _checked(model.initialize, next(iter(data.train_from(0))))
    step = 0
  else:
    print(f"resuming from {checkpoint.restored} (step {step})")

  os.makedirs(config.model_dir, exist_ok=True)
  _write_run_file(config, data.event_shape)
  history = {}
  if step < config.steps:
    log_dir = os.path.join(config.model_dir, "tensorboard")
    with training.interruptible(checkpoint) as on_signal:
      history = training.fit_steps(
          model, data.train_from, steps=config.steps, eval_every=config.eval_every,
          validation_data=data.heldout, verbose=1 if sys.stdout.isatty() else 2,
          callbacks=[
              training.TerminateOnNonFinite(
                  hint=f"try a lower --learning_rate (now {config.learning_rate:g})"),
              training.FlowHealth(next(iter(data.heldout)), log_dir),
              training.TensorBoardScalars(log_dir),
              training.PeriodicCheckpoint(checkpoint, config.checkpoint_every),
              on_signal,
          ])
  else:
    print(f"already trained {step} steps (--steps={config.steps}); skipping training")
  step = training.steps_done(model)
  if checkpoint.latest is None or not checkpoint.latest.endswith(f"-{step}"):
    checkpoint.save(step)

  # Evaluation, export and plots with the moving-average weights when there is one (the
  # checkpoint keeps the raw weights and the average).
  with recipes.ema_weights(model):
    if "val_nll" in history:
      metrics = {k[len("val_"):]: v[-1] for k, v in history.items() if k.startswith("val_")}
    else:
      metrics = model.evaluate(data.heldout, verbose=0, return_dict=True)
    if not all(math.isfinite(float(v)) for v in metrics.values()):
      raise training.NonFiniteError(f"the held-out NLL is {float(metrics['nll'])} at step "
                                    f"{step}; not exporting")
    _checked(export.export_saved_model, model, config.export_dir,
             overwrite=config.overwrite, seed=config.seed)
    plots = _write_plots(config, data, model)

  print(f"checkpoint:  {checkpoint.latest}")
  print(f"tensorboard: {os.path.join(config.model_dir, 'tensorboard')}")
  print(f"export:      {config.export_dir}")
  for path in plots:
    print(f"plot:        {path}")
  line = f"held-out NLL: {float(metrics['nll']):.4f} nats"
  if isinstance(model, models.CIFModel):
    line += f" (importance-sampled, K={model.default_num_samples})"
  if "bits_per_dim" in metrics:
    line += f" ({float(metrics['bits_per_dim']):.4f} bits/dim"
    if config.n_bits != 8:
      metrics["bits_per_dim_n_bits"] = float(metrics["bits_per_dim"]) - (8 - config.n_bits)
      line += f"; {metrics['bits_per_dim_n_bits']:.4f} per {config.n_bits}-bit pixel"
    line += ")"
  if recipes.uses_ema(model):
    line += f" [EMA {config.ema} weights]"
  print(line)
  return {"step": step, "metrics": {k: float(v) for k, v in metrics.items()},
          "checkpoint": checkpoint.latest, "plots": plots}


# --------------------------------------------------------------------------- command line


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with its errors reported as one line and exit status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).strip().splitlines()[0])


class _Terminated(Exception):
  """SIGTERM outside training (training itself saves first: `training.interruptible`)."""


def _kept(config, which):
  """'the <which> checkpoint is <path>', or that there is none, for a closing line."""
  latest = tf.train.latest_checkpoint(_checkpoint_dir(config))
  return f"the {which} checkpoint is {latest}" if latest else "no checkpoint was written"


def _on_sigterm(signum, frame):
  del frame
  raise _Terminated(signum)


def main(argv):
  logging.set_verbosity(logging.WARNING)   # TF's INFO lines (export details) drown the progress
  tf.get_logger().setLevel("ERROR")
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)}
  if FLAGS.config:
    given = {name: value for name, value in values.items() if FLAGS[name].present}
    try:
      values = dict(values, **configs.resolve(FLAGS.config, given))
    except ValueError as e:
      _fail(str(e))
  config = Config(**values)
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  try:
    run(config)
  except UsageError as e:
    _fail(str(e))
  except training.Interrupted as e:
    print(f"interrupted by {signal.Signals(e.signum).name} at step {e.step}: saved "
          f"{e.checkpoint}; run the same command to resume", file=sys.stderr)
    sys.exit(e.exit_code)
  except training.NonFiniteError as e:
    print(f"error: {e}; {_kept(config, 'last finite')}; nothing exported", file=sys.stderr)
    sys.exit(EXIT_DIVERGED)
  except (KeyboardInterrupt, _Terminated) as e:
    signum = e.args[0] if isinstance(e, _Terminated) else signal.SIGINT
    print(f"interrupted by {signal.Signals(signum).name} outside training; "
          f"{_kept(config, 'latest')}; run the "
          "same command to resume", file=sys.stderr)
    sys.exit(128 + int(signum))
  finally:
    signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
