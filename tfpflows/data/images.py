"""Image data sets from TensorFlow Datasets: the 'image' feature, uint8 `[H, W, C]`.

Training uses the 'train' split; evaluation the 'test' split, or, for a data set without
one, the last 10% of 'train' (training then uses the first 90%).
"""

import numpy as np
import tensorflow_datasets as tfds


class UnknownDatasetError(ValueError):
  """No TFDS data set has this name."""


def load_tfds_images(name, *, data_dir=None):
  """Returns `(train, heldout, image_shape)`: datasets of single uint8 images, `(H, W, C)`.

  Downloads and prepares the data set into `data_dir` if needed (TFDS's default folder when
  None).

  Raises:
    UnknownDatasetError: (a ValueError) no TFDS data set is called `name`.
    ValueError: a one-line message: no 'image' feature, images of
      variable shape or not uint8 with 1 or 3 channels, download failed (OSError or
      DownloadError), no 'train' split.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UnknownDatasetError(f"unknown TFDS dataset {name!r}") from None
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' feature; "
                     f"it has: {', '.join(features.keys())}")
  image = features["image"]
  shape = tuple(image.shape)
  if len(shape) != 3 or None in shape or shape[-1] not in (1, 3):
    raise ValueError(f"TFDS dataset {name!r} has images of shape {shape}; "
                     "expected a fixed [H, W, C] with C in {1, 3}")
  if np.dtype(image.np_dtype) != np.uint8:
    raise ValueError(f"TFDS dataset {name!r} has {np.dtype(image.np_dtype)} images; expected uint8")

  try:
    builder.download_and_prepare()
  except (OSError, tfds.core.download.DownloadError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"cannot download or prepare TFDS dataset {name!r} in "
                     f"{builder.data_dir}: {message}") from None
  splits = set(builder.info.splits.keys())  # empty when unknown (e.g. under mock_data)
  if splits and "train" not in splits:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split; it has: "
                     f"{', '.join(sorted(splits))}")
  if not splits or "test" in splits:
    train_split, heldout_split = "train", "test"
  else:
    train_split, heldout_split = "train[:90%]", "train[90%:]"

  def load(split):
    ds = tfds.load(name, split=split, data_dir=data_dir)
    return ds.map(lambda example: example["image"])

  return load(train_split), load(heldout_split), shape
