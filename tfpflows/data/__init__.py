"""Data for flows: 2D toy densities, `.npy` and IDX arrays and TFDS image sets, as tf.data
pipelines.

`load_data(name, batch_size=...)` resolves `name` in this order: a toy density name
(`TOY_NAMES`), a path ending in `.npy` or named like an IDX file (`idx.is_idx_path`), else
a TensorFlow Datasets name (`images.IMAGE_SETS`, `images.ALIASES`, or any TFDS image set).
Every dataset yields float32 `x` only; images are dequantized into `[0, 256)` on the grid of
`n_bits` bits per channel, `x = (floor(q / 2**(8 - n_bits)) + u) 2**(8 - n_bits)`,
`u ~ U[0, 1)` (`pipeline`).
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfpflows.data.arrays import load_npy
from tfpflows.data.idx import is_idx_path, load_idx, read_idx
from tfpflows.data.images import (ALIASES, IMAGE_SETS, UnknownDatasetError, check_cache,
                                   load_tfds_images)
from tfpflows.data import pipeline
from tfpflows.data.pipeline import (check_n_bits, dequantize, eval_batches, n_bit_bits_per_dim,
                                     train_batches)
from tfpflows.data.toy import TOY_NAMES, toy_dataset, toy_log_prob, toy_sample

__all__ = [
    "FlowData", "TOY_NAMES", "load_data", "load_idx", "load_npy", "load_tfds_images",
    "read_idx", "dequantize", "n_bit_bits_per_dim", "IMAGE_SETS", "ALIASES",
    "train_batches", "eval_batches", "toy_sample", "toy_dataset", "toy_log_prob",
]

EVAL_SEED = 1234     # fixed, independent of the training seed: held-out NLLs compare across runs
TOY_HELDOUT = 4096   # held-out points drawn for a toy density
REFERENCE_POINTS = 4096
# Suffixes of data files that no TFDS name has: a missing file with one is reported as
# missing, not handed to TFDS (whose name parser answers in a page of text).
_FILE_SUFFIXES = (".gz", ".npz", ".csv", ".txt", ".bin", ".ubyte", ".png", ".jpg")


@dataclasses.dataclass(frozen=True)
class FlowData:
  """Training and held-out batches of one data set.

  Attributes:
    train_from: `train_from(step)` is the infinite `tf.data.Dataset` of float32 training
      batches `[batch_size, *event_shape]` from batch `step` on. The stream is a pure
      function of the seed and the batch index (see `pipeline`): `train_from(s)` yields what
      `train_from(0)` yields after `s` batches, so a resumed run sees the same data.
    heldout: finite `tf.data.Dataset` of float32 `[<= batch_size, *event_shape]`, the same
      values at every pass.
    event_shape: `(d,)` for vectors, `(H, W, C)` for images.
    is_image: whether `x` is a dequantized image in `[0, 256)`.
    reference: for 2D data, up to 4096 data points `[n, 2]` (numpy) to plot beside samples.
    n_bits: bits per channel of the image grid, `x = (q' + u) 2**(8 - n_bits)` (8 for
      vectors). A model's log-density of `x` stays in 256-unit pixels; `bits_per_dim`
      converts its bits/dim to the n-bit scale.
  """
  train_from: Callable[[int], tf.data.Dataset]
  heldout: tf.data.Dataset
  event_shape: tuple
  is_image: bool
  reference: Optional[np.ndarray] = None
  n_bits: int = 8

  def bits_per_dim(self, bpd_256):
    """`bpd_256 - (8 - n_bits)`: bits/dim on the n-bit scale from 256-unit bits/dim
    (`-log2 p(x) / D` of a density on `[0, 256)^D`, the models' `bits_per_dim`)."""
    return n_bit_bits_per_dim(bpd_256, self.n_bits)

  @property
  def train(self):
    """The training stream from its first batch, `train_from(0)`."""
    return self.train_from(0)


def load_data(name, *, batch_size, seed=0, data_dir=None, n_bits=8, cache="auto"):
  """Builds `FlowData` for a toy name, a `.npy` or IDX path or a TFDS name.

  Images are dequantized on the n-bit grid (Glow's reduction, e.g. 5 bits for CelebA-HQ):
  `q' = floor(q / 2**(8 - n_bits))` in `[0, 2**n_bits)`, `x = (q' + u) 2**(8 - n_bits)`,
  `u ~ U[0, 1)`, so `x` stays in `[0, 256)` and the models need no change. Their
  log-density is then in 256-unit pixels: n-bit bits/dim = 256-unit bits/dim
  `- (8 - n_bits)` (`FlowData.bits_per_dim`).

  Args:
    name: a toy density in `TOY_NAMES`, a path ending in `.npy`, an IDX file (the MNIST
      format, `*-idx3-ubyte` or `*.idx`, gzip or not: `idx.load_idx`, the same split), a
      named TFDS image set (`mnist`, `fashion_mnist`, `cifar10`, `celeb_a` cropped to
      64 x 64, `imagenet32` / `downsampled_imagenet/32x32`, `imagenet64`: `images`), or
      any other TFDS image set name.
    batch_size: batch size of both pipelines.
    seed: int; fixes the training stream (toy draws, shuffling, dequantization noise).
    data_dir: TFDS data folder (TFDS data sets only).
    n_bits: int in 1..8, bits per channel kept for images; must be 8 for vectors.
    cache: TFDS sets only (arrays are in memory already): where the decoded uint8
      training examples are kept after the first epoch: "auto" (memory for sets of at most
      1 GiB), "memory", a folder for a tf.data file cache kept across runs, or None.

  Raises:
    ValueError: one-line message for an unknown name, invalid data, a bad `n_bits` or
      `cache`.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  n_bits = check_n_bits(n_bits)
  cache = check_cache(cache)
  if name in TOY_NAMES:
    _vectors_only(n_bits, name, (2,))
    heldout = toy_sample(name, TOY_HELDOUT, seed=EVAL_SEED)
    return FlowData(
        train_from=lambda step=0: toy_dataset(name, batch_size=batch_size, seed=seed,
                                             start_step=step),
        heldout=eval_batches(tf.data.Dataset.from_tensor_slices(heldout),
                             batch_size=batch_size),
        event_shape=(2,), is_image=False, reference=heldout.numpy())
  if name.endswith(".npy") or is_idx_path(name):
    train, heldout = load_npy(name) if name.endswith(".npy") else load_idx(name)
    is_image = train.ndim == 4
    if not is_image:
      _vectors_only(n_bits, name, train.shape[1:])
    return FlowData(
        train_from=_stream(tf.data.Dataset.from_tensor_slices(train), len(train),
                           batch_size, seed, n_bits),
        heldout=eval_batches(tf.data.Dataset.from_tensor_slices(heldout),
                             batch_size=batch_size, seed=EVAL_SEED, n_bits=n_bits),
        event_shape=tuple(train.shape[1:]), is_image=is_image,
        reference=train[:REFERENCE_POINTS] if train.shape[1:] == (2,) else None,
        n_bits=n_bits)
  if os.path.isdir(name):
    raise ValueError(f"dataset {name!r} is a directory; expected a toy density "
                     f"({', '.join(TOY_NAMES)}), a .npy or IDX file, or a TFDS dataset name")
  if os.path.exists(name):
    raise ValueError(f"dataset file {name!r} is not a .npy or IDX file; expected a path "
                     "ending in .npy, an IDX file (*-idx3-ubyte, *.idx, optionally .gz), a "
                     "toy density or a TFDS dataset name")
  if os.path.splitext(name)[1] in _FILE_SUFFIXES:
    raise ValueError(f"dataset file {name!r} does not exist (and a name ending in "
                     f"{os.path.splitext(name)[1]} is not a TFDS dataset)")
  try:
    train, heldout, shape = load_tfds_images(name, data_dir=data_dir, cache=cache)
  except UnknownDatasetError:
    raise ValueError(f"unknown dataset {name!r}; expected a toy density "
                     f"({', '.join(TOY_NAMES)}), a .npy or IDX file, or a TFDS dataset name "
                     f"(e.g. {', '.join(list(IMAGE_SETS)[:4] + list(ALIASES))})") from None
  return FlowData(
      train_from=_stream(train, None, batch_size, seed, n_bits),
      heldout=eval_batches(heldout, batch_size=batch_size, seed=EVAL_SEED, n_bits=n_bits),
      event_shape=shape, is_image=True, n_bits=n_bits)


def _vectors_only(n_bits, name, shape):
  if n_bits != 8:
    raise ValueError(f"n_bits applies to images only; dataset {name!r} holds vectors of "
                     f"shape {tuple(shape)}: expected n_bits=8, got {n_bits}")


def _stream(examples, num_examples, batch_size, seed, n_bits=8):
  """`step -> train_batches(examples, start_step=step)`, counting the examples only once."""
  count = [num_examples]

  def train_from(step=0):
    if count[0] is None:
      count[0] = pipeline.count_examples(examples)
    return train_batches(examples, batch_size=batch_size, seed=seed, start_step=step,
                         num_examples=count[0], n_bits=n_bits)
  return train_from
