"""Data for flows: 2D toy densities, `.npy` arrays and TFDS image sets, as tf.data pipelines.

`load_data(name, batch_size=...)` resolves `name` in this order: a toy density name
(`TOY_NAMES`), a path ending in `.npy`, else a TensorFlow Datasets name. Every dataset yields
float32 `x` only; images are dequantized into `[0, 256)`.
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tfpflows.data.arrays import load_npy
from tfpflows.data.images import UnknownDatasetError, load_tfds_images
from tfpflows.data.pipeline import dequantize, eval_batches, train_batches
from tfpflows.data.toy import TOY_NAMES, toy_dataset, toy_sample

__all__ = [
    "FlowData", "TOY_NAMES", "load_data", "load_npy", "load_tfds_images", "dequantize",
    "train_batches", "eval_batches", "toy_sample", "toy_dataset",
]

EVAL_SEED = 1234     # fixed, independent of the training seed: held-out NLLs compare across runs
TOY_HELDOUT = 4096   # held-out points drawn for a toy density
REFERENCE_POINTS = 4096


@dataclasses.dataclass(frozen=True)
class FlowData:
  """Training and held-out batches of one data set.

  Attributes:
    train: infinite `tf.data.Dataset` of float32 `[batch_size, *event_shape]`.
    heldout: finite `tf.data.Dataset` of float32 `[<= batch_size, *event_shape]`, the same
      values at every pass.
    event_shape: `(d,)` for vectors, `(H, W, C)` for images.
    is_image: whether `x` is a dequantized image in `[0, 256)`.
    reference: for 2D data, up to 4096 data points `[n, 2]` (numpy) to plot beside samples.
  """
  train: tf.data.Dataset
  heldout: tf.data.Dataset
  event_shape: tuple
  is_image: bool
  reference: Optional[np.ndarray] = None


def load_data(name, *, batch_size, seed=0, data_dir=None):
  """Builds `FlowData` for a toy name, a `.npy` path or a TFDS name.

  Args:
    name: a toy density in `TOY_NAMES`, a path ending in `.npy`, or a TFDS data set name.
    batch_size: batch size of both pipelines.
    seed: int; fixes the training stream (toy draws, shuffling, dequantization noise).
    data_dir: TFDS data folder (TFDS data sets only).

  Raises:
    ValueError: one-line message for an unknown name or invalid data.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  if name in TOY_NAMES:
    heldout = toy_sample(name, TOY_HELDOUT, seed=EVAL_SEED)
    return FlowData(
        train=toy_dataset(name, batch_size=batch_size, seed=seed),
        heldout=eval_batches(tf.data.Dataset.from_tensor_slices(heldout),
                             batch_size=batch_size),
        event_shape=(2,), is_image=False, reference=heldout.numpy())
  if name.endswith(".npy"):
    train, heldout = load_npy(name)
    is_image = train.ndim == 4
    return FlowData(
        train=train_batches(tf.data.Dataset.from_tensor_slices(train),
                            batch_size=batch_size, seed=seed),
        heldout=eval_batches(tf.data.Dataset.from_tensor_slices(heldout),
                             batch_size=batch_size, seed=EVAL_SEED),
        event_shape=tuple(train.shape[1:]), is_image=is_image,
        reference=train[:REFERENCE_POINTS] if train.shape[1:] == (2,) else None)
  try:
    train, heldout, shape = load_tfds_images(name, data_dir=data_dir)
  except UnknownDatasetError:
    raise ValueError(f"unknown dataset {name!r}; expected a toy density "
                     f"({', '.join(TOY_NAMES)}), a path ending in .npy, "
                     "or a TFDS dataset name") from None
  return FlowData(
      train=train_batches(train, batch_size=batch_size, seed=seed),
      heldout=eval_batches(heldout, batch_size=batch_size, seed=EVAL_SEED),
      event_shape=shape, is_image=True)
