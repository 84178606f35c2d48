r"""Trains a flow on a 2D toy density, a .npy file or a TFDS image set, and exports it.

  python -m trainers.train --model=realnvp --dataset=moons --steps=2000 \
      --batch_size=256 --model_dir=/tmp/moons --export_dir=/tmp/moons_export

  python -m trainers.train --model=glow --dataset=mnist --steps=20000 --batch_size=64 \
      --num_levels=2 --model_dir=/tmp/mnist --export_dir=/tmp/mnist_export

--dataset is a toy density name, a path ending in .npy ([N, d] float vectors or
[N, H, W, C] uint8 images), or a TFDS name. Training runs `model.fit` in epochs of
--eval_every steps; after each it evaluates the held-out data, logs to TensorBoard
(<model_dir>/tensorboard) and writes a checkpoint (<model_dir>/checkpoints). A second run
with the same --model_dir resumes from the latest checkpoint. At the end the model is
exported as a SavedModel to --export_dir and plots are written to --model_dir.

Bad input (flags, data, an existing --export_dir without --overwrite) is reported as one
line on stderr with exit status 2, before anything is written.
"""

import dataclasses
import math
import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfpflows import data as flow_data
from tfpflows import export
from tfpflows import models
from tfpflows import plotting
from tfpflows.checkpoint import FlowCheckpoint

MODELS = models.NAMES
NUM_SAMPLES_2D = 4096
NUM_SAMPLES_IMAGES = 36
TEMPERATURES = (0.7, 1.0)


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
  num_levels: Optional[int] = None
  num_steps: Optional[int] = None
  hidden: Optional[int] = None
  overwrite: bool = False
  seed: int = 0


class UsageError(Exception):
  """Bad input, reported as one line; raised before anything is written."""


def _define_flags():
  d = Config.__dataclass_fields__  # defaults live in Config only
  flags.DEFINE_string("model", None, f"Flow: one of {', '.join(MODELS)}.")
  flags.DEFINE_string("dataset", None,
                      f"A toy density ({', '.join(flow_data.TOY_NAMES)}), a path ending in "
                      ".npy, or a TFDS dataset name.")
  flags.DEFINE_integer("steps", d["steps"].default, "Training steps in total (rounded up to "
                       "whole --eval_every epochs).", lower_bound=1)
  flags.DEFINE_integer("batch_size", d["batch_size"].default, "Examples per step.",
                       lower_bound=1)
  flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs and plots; a run "
                      "resumes from the latest checkpoint here.")
  flags.DEFINE_string("export_dir", None, "Where the SavedModel is written.")
  flags.DEFINE_string("data_dir", None, "TFDS data folder (default: TFDS's own).")
  flags.DEFINE_float("learning_rate", d["learning_rate"].default, "Adam learning rate.")
  flags.DEFINE_integer("eval_every", d["eval_every"].default, "Steps between held-out "
                       "evaluations and checkpoints.", lower_bound=1)
  flags.DEFINE_integer("num_levels", None, "Multi-scale levels (default: per model).",
                       lower_bound=1)
  flags.DEFINE_integer("num_steps", None, "Flow steps per level (default: per model).",
                       lower_bound=1)
  flags.DEFINE_integer("hidden", None, "Hidden width of the coupling networks (default: "
                       "per model).", lower_bound=1)
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
  if not config.learning_rate > 0:
    raise UsageError(f"--learning_rate must be > 0; got {config.learning_rate}")
  if os.path.exists(config.model_dir) and not os.path.isdir(config.model_dir):
    raise UsageError(f"--model_dir {config.model_dir!r} exists and is not a directory")
  if os.path.exists(config.export_dir) and not config.overwrite:
    raise UsageError(f"--export_dir {config.export_dir!r} already exists; pass --overwrite "
                     "to replace it")


def _validate_batch_size(config, event_shape):
  """ActNorm's init needs >= 2 values per channel in the first batch."""
  per_channel = config.batch_size * math.prod(event_shape[:-1])
  if per_channel < 2:
    raise UsageError(f"--batch_size={config.batch_size} is too small to initialise ActNorm "
                     "on vectors; need --batch_size >= 2")


def _build_model(config, event_shape):
  kwargs = {k: getattr(config, k) for k in ("num_levels", "num_steps", "hidden")
            if getattr(config, k) is not None}
  return _checked(models.build_flow, config.model, event_shape=event_shape, seed=config.seed,
                  **kwargs)


# --------------------------------------------------------------------------- training


def _steps_done(model):
  return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class _SaveCheckpoint(keras.callbacks.Callback):
  """After each epoch, saves a checkpoint numbered by the optimizer's step count."""

  def __init__(self, checkpoint):
    super().__init__()
    self._checkpoint = checkpoint

  def on_epoch_end(self, epoch, logs=None):
    self._checkpoint.save(_steps_done(self.model))


class _TensorBoardScalars(keras.callbacks.Callback):
  """Writes each epoch's logs as TensorBoard scalars at the training step reached, to
  <log_dir>/train and <log_dir>/validation (`keras.callbacks.TensorBoard`'s layout).

  `keras.callbacks.TensorBoard` needs the `tensorboard` package, which TF 2.21 no longer
  installs; `tf.summary.write` with the scalars plugin's metadata is core TensorFlow.
  """

  _METADATA = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

  def __init__(self, log_dir):
    super().__init__()
    self._log_dir, self._writers = log_dir, {}

  def on_train_begin(self, logs=None):
    self._writers = {split: tf.summary.create_file_writer(os.path.join(self._log_dir, split))
                     for split in ("train", "validation")}

  def on_epoch_end(self, epoch, logs=None):
    step = _steps_done(self.model)
    for name, value in (logs or {}).items():
      split, tag = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
      with self._writers[split].as_default():
        tf.summary.write(tag, tf.constant(float(value)), step=step, metadata=self._METADATA)
    for writer in self._writers.values():
      writer.flush()

  def on_train_end(self, logs=None):
    for writer in self._writers.values():
      writer.close()


class _ResidualHealth(keras.callbacks.Callback):
  """After each epoch, the residual blocks' health on a held-out batch.

  `FlowModel.diagnostics`: each block's Lipschitz bound, sampled series length, spread of
  the log-det estimate, and the fixed-point inverse's iterations and residual. Every block's
  figures go to TensorBoard (<log_dir>/diagnostics, tags "<block>/<figure>"); the worst or
  mean over blocks joins the epoch's logs, so the progress line and the train scalars show
  them. Does nothing for flows without residual blocks.
  """

  _SUMMARY = (("lipschitz", max, "lipschitz_max"), ("series_terms", None, "series_terms"),
              ("logdet_std", None, "logdet_std"), ("inverse_iterations", max, "inverse_iters"),
              ("inverse_residual", max, "inverse_residual"))

  def __init__(self, batch, log_dir):
    super().__init__()
    self._batch, self._log_dir, self._writer = batch, log_dir, None

  def on_epoch_end(self, epoch, logs=None):
    report = self.model.diagnostics(self._batch)
    if not report:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(os.path.join(self._log_dir, "diagnostics"))
    step = _steps_done(self.model)
    with self._writer.as_default():
      for tag, value in report.items():
        tf.summary.write(tag, tf.constant(value), step=step,
                         metadata=_TensorBoardScalars._METADATA)
    self._writer.flush()
    if logs is None:
      return
    for figure, reduce, key in self._SUMMARY:
      values = [v for k, v in report.items() if k.endswith("/" + figure)]
      if values:
        logs[key] = reduce(values) if reduce else sum(values) / len(values)

  def on_train_end(self, logs=None):
    if self._writer is not None:
      self._writer.close()


def _restore(config, model, first_batch):
  """Restores the latest checkpoint in model_dir, if any, else initialises ActNorm.

  Returns `(checkpoint, step, restored)`: the `FlowCheckpoint` (it writes nothing until its
  first save), the step reached, and whether a checkpoint was restored.
  """
  ckpt = FlowCheckpoint(model, os.path.join(config.model_dir, "checkpoints"))
  step = _checked(ckpt.restore_latest)
  if not model.initialized:
    print("initialising ActNorm on the first batch")
    _checked(model.initialize, first_batch)
  return ckpt, step or 0, step is not None


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
    paths.append(plotting.plot_density_2d(
        model.log_prob, os.path.join(config.model_dir, "density.png"),
        reference=data.reference, title=f"density: {title}"))
    paths.append(plotting.plot_samples_2d(
        model.sample(NUM_SAMPLES_2D, seed=config.seed),
        os.path.join(config.model_dir, "samples.png"),
        reference=data.reference, title=f"samples: {title}"))
  return paths


def run(config):
  """Validates `config`, trains, exports and plots; returns a dict of results.

  Raises:
    UsageError: bad input, found before any file or folder is created.
  """
  # Validation: nothing is written until all of it has passed.
  _validate_config(config)
  data = _checked(flow_data.load_data, config.dataset, batch_size=config.batch_size,
                  seed=config.seed, data_dir=config.data_dir)
  _validate_batch_size(config, data.event_shape)
  keras.utils.set_random_seed(config.seed)
  model = _build_model(config, data.event_shape)
  model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
  first_batch = next(iter(data.train))
  checkpoint, step, restored = _restore(config, model, first_batch)

  steps_per_epoch = min(config.eval_every, config.steps)
  epochs = math.ceil(config.steps / steps_per_epoch)
  initial_epoch = step // steps_per_epoch
  if restored:
    print(f"resuming from {checkpoint.latest} (step {step})")

  os.makedirs(config.model_dir, exist_ok=True)
  history = {}
  if initial_epoch < epochs:
    history = model.fit(
        data.train, steps_per_epoch=steps_per_epoch, epochs=epochs,
        initial_epoch=initial_epoch, validation_data=data.heldout,
        verbose=1 if sys.stdout.isatty() else 2, shuffle=False,
        callbacks=[
            _ResidualHealth(next(iter(data.heldout)),
                            os.path.join(config.model_dir, "tensorboard")),
            _TensorBoardScalars(os.path.join(config.model_dir, "tensorboard")),
            _SaveCheckpoint(checkpoint),
        ]).history
  else:
    print(f"already trained {step} steps (--steps={config.steps}); "
          "skipping training")

  if "val_nll" in history:
    metrics = {k[len("val_"):]: v[-1] for k, v in history.items() if k.startswith("val_")}
  else:
    metrics = model.evaluate(data.heldout, verbose=0, return_dict=True)

  _checked(export.export_saved_model, model, config.export_dir, overwrite=config.overwrite,
           seed=config.seed)
  plots = _write_plots(config, data, model)

  print(f"checkpoint:  {checkpoint.latest}")
  print(f"tensorboard: {os.path.join(config.model_dir, 'tensorboard')}")
  print(f"export:      {config.export_dir}")
  for path in plots:
    print(f"plot:        {path}")
  line = f"held-out NLL: {float(metrics['nll']):.4f} nats"
  if "bits_per_dim" in metrics:
    line += f" ({float(metrics['bits_per_dim']):.4f} bits/dim)"
  print(line)
  return {"step": _steps_done(model), "metrics": {k: float(v) for k, v in metrics.items()},
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


def main(argv):
  logging.set_verbosity(logging.WARNING)   # TF's INFO lines (export details) drown the progress
  tf.get_logger().setLevel("ERROR")
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  config = Config(**{f.name: FLAGS[f.name].value for f in dataclasses.fields(Config)})
  try:
    run(config)
  except UsageError as e:
    _fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
