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
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    optimizer = getattr(model, "optimizer", None)
    self._groups = dict(model=_by_position(model.variables))
    if optimizer is not None:
      if not optimizer.built:
        optimizer.build(model.trainable_variables)
      self._groups["optimizer"] = _by_position(optimizer.variables)
    self._checkpoint = tf.train.Checkpoint(step=self.step, **self._groups)
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
    """Restores the latest checkpoint if there is one; returns its step, else None.

    Raises:
      ValueError: (one line) the checkpoint holds other variables or shapes than the
        model, e.g. another architecture; checked before anything is restored.
    """
    path = self._manager.latest_checkpoint
    if path is None:
      return None
    self._check_compatible(path)
    self._checkpoint.restore(path).assert_existing_objects_matched()
    return int(self.step.numpy())

  def _check_compatible(self, path):
    saved = {k: v for k, v in tf.train.load_checkpoint(path).get_variable_to_shape_map().items()
             if k.startswith(tuple(self._groups))}
    expected = {f"{group}/{key}/.ATTRIBUTES/VARIABLE_VALUE": list(v.shape)
                for group, variables in self._groups.items() for key, v in variables.items()}
    if len(saved) != len(expected):
      raise ValueError(f"checkpoint {path} does not match the model: it holds {len(saved)} "
                       f"variables, the model and optimizer {len(expected)}; use a new directory")
    for key, shape in expected.items():
      if saved.get(key) != shape:
        raise ValueError(f"checkpoint {path} does not match the model ({key.split('/.')[0]}: "
                         f"saved {saved.get(key)}, expected {shape}); use a new directory")
