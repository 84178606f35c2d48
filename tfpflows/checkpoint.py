"""Training checkpoints of a Keras 3 `FlowModel`: weights, ActNorm state, optimizer, step.

`tf.train.Checkpoint(model=model)` does not see a Keras 3 model's variables (it writes
only its own save counter, and restores nothing, silently). Keras 3 variables are TF
trackables themselves, so this module checkpoints them explicitly, keyed by their position
in `model.variables` (fixed by the architecture; Keras' variable paths are not, since
layer names carry per-process counters), together with the optimizer's variables and the
training step. Writes are atomic (TF writes the data files first and the `checkpoint`
index last).
"""

import os

import tensorflow as tf

__all__ = ["FlowCheckpoint"]


def _by_position(variables):
  return {f"v{i:05d}": v for i, v in enumerate(variables)}


class FlowCheckpoint:
  """Saves and restores a model, its optimizer and the step count in `directory`.

  Args:
    model: a compiled `FlowModel` (its optimizer is built here if it was not).
    directory: where checkpoints go; created on the first `save`.
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, model, directory, *, max_to_keep=3):
    self.model = model
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    optimizer = getattr(model, "optimizer", None)
    parts = dict(model=_by_position(model.variables), step=self.step)
    if optimizer is not None:
      if not optimizer.built:
        optimizer.build(model.trainable_variables)
      parts["optimizer"] = _by_position(optimizer.variables)
    self._checkpoint = tf.train.Checkpoint(**parts)
    self.directory = os.fspath(directory)
    self._manager = tf.train.CheckpointManager(self._checkpoint, self.directory,
                                               max_to_keep=max_to_keep)

  @property
  def latest(self):
    return self._manager.latest_checkpoint

  def save(self, step):
    """Writes a checkpoint at training step `step`; returns its path."""
    self.step.assign(int(step))
    return self._manager.save(checkpoint_number=int(step))

  def restore_latest(self):
    """Restores the latest checkpoint if there is one; returns its step, else None."""
    path = self._manager.latest_checkpoint
    if path is None:
      return None
    self._checkpoint.restore(path).assert_existing_objects_matched()
    return int(self.step.numpy())
