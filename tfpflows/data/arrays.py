"""`.npy` files as flow data: `[N, d]` float vectors or `[N, H, W, C]` uint8 images.

The file is read and validated in full before anything else happens, and split in order:
the last `max(1, round(0.1 N))` rows are held out, the rest are for training.
"""

import os

import numpy as np

HELDOUT_FRACTION = 0.1
MIN_TRAIN_ROWS = 2  # ActNorm's data-dependent init needs two distinct rows.


def load_npy(path):
  """Loads and validates `path`; returns `(train, heldout)` numpy arrays.

  Vectors (`[N, d]`, any real dtype) come back as float32; images (`[N, H, W, C]`, uint8,
  `C` in {1, 3}) stay uint8 and are dequantized by the input pipeline.

  Raises:
    ValueError: a one-line message naming the problem: missing or unreadable file, wrong
      rank, wrong dtype, NaN or Inf, too few rows.
  """
  if os.path.isdir(path):
    raise ValueError(f"dataset {path!r} is a directory; expected a .npy file")
  if not os.path.isfile(path):
    raise ValueError(f"dataset file {path!r} does not exist")
  if os.path.getsize(path) == 0:
    raise ValueError(f"dataset file {path!r} is empty (0 bytes); expected a .npy array")
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"cannot read {path!r} as a .npy array: {first_line(e)}") from None
  if not isinstance(array, np.ndarray):
    raise ValueError(f"{path!r} holds an archive, not a single .npy array")
  return split_rows(check_array(array, path), path)


def check_array(array, path):
  """`array` as flow data (vectors float32, images uint8) or a one-line ValueError."""
  if array.ndim == 2:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
      raise ValueError(f"{path!r}: vectors [N, d] must be real numbers; got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
      raise ValueError(f"{path!r} contains NaN or Inf values")
  elif array.ndim == 4:
    if array.dtype != np.uint8:
      raise ValueError(f"{path!r}: images [N, H, W, C] must be uint8; got dtype {array.dtype}")
    if array.shape[-1] not in (1, 3):
      raise ValueError(f"{path!r}: images need 1 or 3 channels; got shape {array.shape}")
  else:
    raise ValueError(f"{path!r} has shape {array.shape}; expected [N, d] float vectors "
                     "or [N, H, W, C] uint8 images")

  if 0 in array.shape[1:]:
    raise ValueError(f"{path!r} has shape {array.shape}; every event dimension must be >= 1")
  return array


def split_rows(array, path):
  """`(train, heldout)`: the last `max(1, round(0.1 N))` rows held out, in order."""
  n = array.shape[0]
  heldout = max(1, int(round(HELDOUT_FRACTION * n)))
  if n - heldout < MIN_TRAIN_ROWS:
    raise ValueError(f"{path!r} has {n} rows; need at least {MIN_TRAIN_ROWS + 1} "
                     f"({MIN_TRAIN_ROWS} to train on, 1 held out)")
  return array[:n - heldout], array[n - heldout:]


def first_line(error):
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
