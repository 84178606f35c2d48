"""Training checkpoints of a Keras 3 `FlowModel`: weights, ActNorm state, optimizer, step.

`tf.train.Checkpoint(model=model)` does not see a Keras 3 model's variables (it writes
only its own save counter, and restores nothing, silently). Keras 3 variables are TF
trackables themselves, so this module checkpoints them explicitly, keyed by their position
in `model.variables` (fixed by the architecture; Keras' variable paths are not, since
layer names carry per-process counters), together with the optimizer's variables and the
training step.

What is written is always usable:

* `save` refuses non-finite weights (`NonFiniteError`): a diverged run never rotates its
  good checkpoints out with NaN ones.
* Writes are atomic: TF writes the data files under temporary names and the `checkpoint`
  index last, so a process killed during a save leaves the previous checkpoint the latest.
* `restore_latest` reads every tensor of a checkpoint (and checks it is finite and matches
  the model) before it restores anything; a truncated or corrupt latest checkpoint is
  skipped for the newest good one, and named in `skipped`.
"""

import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

__all__ = ["FlowCheckpoint", "NonFiniteError", "all_finite"]


class NonFiniteError(ValueError):
  """Weights or a loss that are NaN or infinite, where only finite values may go."""


def _by_position(variables):
  return {f"v{i:05d}": v for i, v in enumerate(variables)}


def all_finite(variables):
  """Whether every floating-point variable of `variables` holds only finite values."""
  checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables
            if tf.as_dtype(v.dtype).is_floating]
  return bool(tf.reduce_all(tf.stack(checks))) if checks else True


class _Corrupt(Exception):
  """A checkpoint that cannot be read back whole."""


class FlowCheckpoint:
  """Saves and restores a model, its optimizer and the step count in `directory`.

  Args:
    model: a compiled `FlowModel` (its optimizer is built here if it was not).
    directory: where checkpoints go; created on the first `save`.
    max_to_keep: how many recent checkpoints to keep.

  Raises:
    ValueError: (one line) `directory` holds an unreadable `checkpoint` index file.
  """

  def __init__(self, model, directory, *, max_to_keep=3):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    optimizer = getattr(model, "optimizer", None)
    self._groups = dict(model=_by_position(model.variables))
    if optimizer is not None:
      if not optimizer.built:
        optimizer.build(model.trainable_variables)
      self._groups["optimizer"] = _by_position(optimizer.variables)
    self._checkpoint = tf.train.Checkpoint(step=self.step, **self._groups)
    self.directory = os.fspath(directory)
    self.skipped = []   # [(path, reason)] of corrupt checkpoints passed over by restore
    self.restored = None  # the path restore_latest restored
    try:
      self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory,
                                                 max_to_keep=max_to_keep)
    except (text_format.ParseError, tf.errors.OpError, UnicodeDecodeError) as e:
      raise ValueError(f"the checkpoint index {os.path.join(self.directory, 'checkpoint')} "
                       f"is corrupt ({_first_line(e)}); move it away to start over") from None

  @property
  def latest(self):
    return self._manager.latest_checkpoint

  def _variables(self):
    return [v for group in self._groups.values() for v in group.values()]

  def save(self, step):
    """Writes a checkpoint at training step `step`; returns its path.

    Raises:
      NonFiniteError: some weight or optimizer variable is NaN or infinite; nothing written.
    """
    if not all_finite(self._variables()):
      raise NonFiniteError(f"the weights are not finite at step {int(step)}; not saving a "
                           "checkpoint")
    self.step.assign(int(step))
    return self._manager.save(checkpoint_number=int(step))

  def restore_latest(self):
    """Restores the newest good checkpoint if there is one; returns its step, else None.

    Corrupt checkpoints (truncated or unreadable files, non-finite values) are passed over
    for the next older one and listed in `skipped`.

    Raises:
      ValueError: (one line) a checkpoint holds other variables or shapes than the model,
        e.g. another architecture; or every checkpoint listed is corrupt. Checked before
        anything is restored.
    """
    self.skipped = []
    for path in reversed(self._candidates()):
      try:
        self._verify(path)
      except _Corrupt as e:
        self.skipped.append((path, str(e)))
        continue
      self._checkpoint.restore(path).assert_existing_objects_matched()
      self.restored = path
      return int(self.step.numpy())
    if self.skipped:
      path, reason = self.skipped[0]
      raise ValueError(f"checkpoint {path} is corrupt ({reason}) and no older good one is "
                       f"left in {self.directory}; move the folder away to start over")
    return None

  def _candidates(self):
    """Checkpoint prefixes the index lists, oldest first (those whose index file exists)."""
    paths = list(self._manager.checkpoints)
    latest = self._manager.latest_checkpoint
    if latest and latest not in paths:
      paths.append(latest)
    return [p for p in paths if tf.io.gfile.exists(p + ".index")] or (
        [latest] if latest else [])

  def _verify(self, path):
    """Reads every tensor of `path`; raises `_Corrupt`, or ValueError for another model."""
    try:
      reader = tf.train.load_checkpoint(path)
      shapes = reader.get_variable_to_shape_map()
    except Exception as e:  # pylint: disable=broad-except
      raise _Corrupt(_first_line(e)) from None
    self._check_compatible(path, shapes)
    for key in shapes:
      try:
        value = reader.get_tensor(key)
      except Exception as e:  # pylint: disable=broad-except  (any failure to read = corrupt)
        raise _Corrupt(f"{key.split('/.')[0]}: {_first_line(e)}") from None
      if np.asarray(value).dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise _Corrupt(f"{key.split('/.')[0]} holds NaN or Inf")

  def _check_compatible(self, path, shapes):
    saved = {k: v for k, v in shapes.items() if k.startswith(tuple(self._groups))}
    expected = {f"{group}/{key}/.ATTRIBUTES/VARIABLE_VALUE": list(v.shape)
                for group, variables in self._groups.items() for key, v in variables.items()}
    if len(saved) != len(expected):
      raise ValueError(f"checkpoint {path} does not match the model: it holds {len(saved)} "
                       f"variables, the model and optimizer {len(expected)}; use a new directory")
    for key, shape in expected.items():
      if saved.get(key) != shape:
        raise ValueError(f"checkpoint {path} does not match the model ({key.split('/.')[0]}: "
                         f"saved {saved.get(key)}, expected {shape}); use a new directory")


def _first_line(error):
  text = str(error).strip()
  return text.splitlines()[0][:200] if text else type(error).__name__
