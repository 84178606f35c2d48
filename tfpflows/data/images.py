"""Image data sets from TensorFlow Datasets: uint8 `[H, W, C]` examples in a fixed order.

Named sets (`IMAGE_SETS`; `ALIASES` maps short names onto them), training split / held-out
split / event shape:

  mnist, fashion_mnist                      train / test        / 28 x 28 x 1
  cifar10                                   train / test        / 32 x 32 x 3
  celeb_a                                   train / test        / 64 x 64 x 3 (from 218 x 178)
  downsampled_imagenet/32x32 (imagenet32)   train / validation  / 32 x 32 x 3
  downsampled_imagenet/64x64 (imagenet64)   train / validation  / 64 x 64 x 3

CelebA is cropped and resized as in RealNVP (Dinh, Sohl-Dickstein, Bengio 2017): the central
148 x 148 window (rows 35..182, columns 15..162), resized to 64 x 64 by area averaging
(each output pixel the mean of the 2.3125 x 2.3125 input pixels it covers) and rounded to
uint8. Its 'validation' split is not used. TFDS declares downsampled ImageNet's images of
variable size; an image of another size than the set's (e.g. under
`tfds.testing.mock_data`) is area-resized to it.

Any other TFDS name with a fixed-shape uint8 'image' feature of 1 or 3 channels trains on
'train' and holds out 'test', else 'validation', else the last 10% of 'train' (training
then on the first 90%).

Order: the splits are read with `shuffle_files=False`, one file after another, by a
deterministic tf.data pipeline, so every pass and every process sees the examples in the
same order; `pipeline.train_batches` shuffles them by stateless permutations.

Caching (`cache=`) keeps the decoded, preprocessed uint8 training examples so that epochs
after the first neither read nor decode again:
  - `"auto"` (default): `"memory"` when the training split is known to take at most
    `MEMORY_CACHE_BYTES` (1 GiB: mnist, fashion_mnist, cifar10), else `None`;
  - `"memory"`: `tf.data.Dataset.cache()`, filled during the first epoch;
  - a folder path: a tf.data file cache (`cache(filename)`) in that folder, named after the
    data set, its version, split and preprocessing, kept across runs. It is written in full
    under a temporary name by the first run that needs it (one pass over the split before
    `load_tfds_images` returns) and then renamed, so a killed run never leaves a half
    cache or a stale lock behind (temporaries of dead processes on this host are removed);
  - `None`: no cache.
The held-out pipeline caches its batches in memory (`pipeline.eval_batches`).
"""

import dataclasses
import os
import re
import socket
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

MEMORY_CACHE_BYTES = 1 << 30
CELEBA_CROP = 148
CELEBA_SIZE = 64


class UnknownDatasetError(ValueError):
  """No TFDS data set has this name."""


def to_uint8(x):
  """float `x` -> `round(clip(x, 0, 255))` as uint8."""
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def central_crop_resize(image, *, crop=CELEBA_CROP, size=CELEBA_SIZE):
  """uint8 `[H, W, C]` -> its central `crop x crop` window area-resized to `[size, size, C]`.

  The window starts at row `(H - crop) // 2` and column `(W - crop) // 2`; the resize
  averages the input pixels each output pixel covers (`tf.image.resize(method="area")`)
  and rounds to uint8.
  """
  shape = tf.shape(image)
  window = tf.image.crop_to_bounding_box(image, (shape[0] - crop) // 2,
                                         (shape[1] - crop) // 2, crop, crop)
  resized = to_uint8(tf.image.resize(window, (size, size), method="area"))
  return tf.ensure_shape(resized, (size, size, image.shape[-1]))


def fixed_size(image, *, size):
  """uint8 `[h, w, C]` -> itself when `h = w = size`, else area-resized to `[size, size, C]`."""
  shape = tf.shape(image)
  same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
  out = tf.cond(same, lambda: image,
                lambda: to_uint8(tf.image.resize(image, (size, size), method="area")))
  return tf.ensure_shape(out, (size, size, image.shape[-1]))


@dataclasses.dataclass(frozen=True)
class ImageSet:
  """A named TFDS image set: its splits and the map from TFDS's image to the event.

  Attributes:
    train_split / heldout_split: TFDS split names.
    shape: the event shape `(H, W, C)` after `preprocess`.
    preprocess: uint8 `[h, w, C]` -> uint8 `shape`, or None for the image as stored.
    tag: names the preprocessing in file-cache names.
  """
  train_split: str
  heldout_split: str
  shape: tuple
  preprocess: Optional[Callable] = None
  tag: str = "as-stored"


IMAGE_SETS = {
    "mnist": ImageSet("train", "test", (28, 28, 1)),
    "fashion_mnist": ImageSet("train", "test", (28, 28, 1)),
    "cifar10": ImageSet("train", "test", (32, 32, 3)),
    "celeb_a": ImageSet("train", "test", (CELEBA_SIZE, CELEBA_SIZE, 3), central_crop_resize,
                        f"crop{CELEBA_CROP}-{CELEBA_SIZE}x{CELEBA_SIZE}"),
    "downsampled_imagenet/32x32": ImageSet(
        "train", "validation", (32, 32, 3), lambda image: fixed_size(image, size=32), "32x32"),
    "downsampled_imagenet/64x64": ImageSet(
        "train", "validation", (64, 64, 3), lambda image: fixed_size(image, size=64), "64x64"),
}
ALIASES = {"imagenet32": "downsampled_imagenet/32x32",
           "imagenet64": "downsampled_imagenet/64x64"}


def resolve_name(name):
  """The TFDS name of `name`: `ALIASES[name]`, else `name`."""
  return ALIASES.get(name, name)


def check_cache(cache):
  """`cache` if it is None, "auto", "memory" or a folder path (str), else a one-line ValueError."""
  if cache is None or (isinstance(cache, (str, os.PathLike)) and str(cache)):
    return None if cache is None else str(cache)
  raise ValueError(f"cache must be None, 'auto', 'memory' or a folder path; got {cache!r}")


def cache_mode(cache, num_examples, shape):
  """`cache` with "auto" resolved: "memory" if `num_examples` images of `shape` (uint8) are
  known to fit in `MEMORY_CACHE_BYTES`, else None."""
  if cache != "auto":
    return cache
  fits = num_examples is not None and 0 <= num_examples and (
      num_examples * int(np.prod(shape)) <= MEMORY_CACHE_BYTES)
  return "memory" if fits else None


def load_tfds_images(name, *, data_dir=None, cache="auto"):
  """Returns `(train, heldout, image_shape)`: datasets of single uint8 images, `(H, W, C)`.

  `name` is a named set, an alias (`imagenet32`, `imagenet64`) or any TFDS name with a
  fixed-shape uint8 'image' feature (module docstring). `train` is cached as `cache` says.
  Downloads and prepares the data set into `data_dir` if needed (TFDS's default folder when
  None).

  Raises:
    UnknownDatasetError: (a ValueError) no TFDS data set is called `name`.
    ValueError: a one-line message: no 'image' feature, images of
      variable shape or not uint8 with 1 or 3 channels, download failed (OSError or
      DownloadError), no 'train' split, a bad `cache` or a cache folder that cannot be
      written.
  """
  cache = check_cache(cache)
  name = resolve_name(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UnknownDatasetError(f"unknown TFDS dataset {name!r}") from None
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' feature; "
                     f"it has: {', '.join(features.keys())}")
  image = features["image"]
  stored = tuple(image.shape)
  named = IMAGE_SETS.get(name)
  if np.dtype(image.np_dtype) != np.uint8:
    raise ValueError(f"TFDS dataset {name!r} has {np.dtype(image.np_dtype)} images; expected uint8")
  if named is None and (len(stored) != 3 or None in stored or stored[-1] not in (1, 3)):
    raise ValueError(f"TFDS dataset {name!r} has images of shape {stored}; "
                     "expected a fixed [H, W, C] with C in {1, 3}")

  try:
    builder.download_and_prepare()
  except (OSError, tfds.core.download.DownloadError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"cannot download or prepare TFDS dataset {name!r} in "
                     f"{builder.data_dir}: {message}") from None
  splits = set(builder.info.splits.keys())  # empty when unknown (e.g. under mock_data)
  if named is not None:
    train_split, heldout_split = named.train_split, named.heldout_split
  elif splits and "train" not in splits:
    raise ValueError(f"TFDS dataset {name!r} has no 'train' split; it has: "
                     f"{', '.join(sorted(splits))}")
  elif not splits or "test" in splits:
    train_split, heldout_split = "train", "test"
  elif "validation" in splits:
    train_split, heldout_split = "train", "validation"
  else:
    train_split, heldout_split = "train[:90%]", "train[90%:]"
  for split in (train_split, heldout_split):
    if splits and split.split("[")[0] not in splits:
      raise ValueError(f"TFDS dataset {name!r} has no {split!r} split; it has: "
                       f"{', '.join(sorted(splits))}")
  shape = named.shape if named is not None else stored
  preprocess = named.preprocess if named is not None else None

  def load(split):
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(options=options, try_autocache=False, shuffle_seed=0,
                                  interleave_cycle_length=1)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config,
                            decoders=tfds.decode.PartialDecoding({"image": True}))
    ds = ds.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    if preprocess is not None:
      ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds

  train = load(train_split)
  mode = cache_mode(cache, int(train.cardinality()), shape)
  if mode == "memory":
    train = train.cache()
  elif mode is not None:
    label = f"{builder.info.full_name}-{train_split}-{named.tag if named else 'as-stored'}"
    train = file_cache(train, os.path.join(mode, re.sub(r"[^A-Za-z0-9.=-]+", "_", label)))
  return train, load(heldout_split), shape


def _host():
  return re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname()) or "host"


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # PermissionError: someone else's live process
    return True
  return True


def sweep_stale_parts(prefix):
  """Removes `<prefix>.part-<host>-<pid>*` files of processes of this host that are gone."""
  part = re.compile(re.escape(os.path.basename(prefix)) + r"\.part-([A-Za-z0-9]+)-(\d+)[._]")
  for path in tf.io.gfile.glob(prefix + ".part-*"):
    match = part.match(os.path.basename(path))
    if match and match.group(1) == _host() and not _alive(int(match.group(2))):
      tf.io.gfile.remove(path)


def file_cache(examples, prefix):
  """`examples.cache(prefix)`, written in full now if `<prefix>.index` does not exist yet.

  The cache is written under `<prefix>.part-<host>-<pid>` by one pass over `examples`, then
  its files are renamed to `prefix` (the `.index` last): `prefix` names a complete cache or
  none, and the returned dataset only reads it.

  Raises:
    ValueError: one line, when the folder cannot be created or the cache written.
  """
  if tf.io.gfile.exists(prefix + ".index"):
    return examples.cache(prefix)
  folder = os.path.dirname(prefix)
  part = f"{prefix}.part-{_host()}-{os.getpid()}"
  try:
    if tf.io.gfile.exists(folder) and not tf.io.gfile.isdir(folder):
      raise ValueError(f"cache folder {folder!r} is a file; expected a folder for the "
                       "tf.data file cache")
    tf.io.gfile.makedirs(folder)
    sweep_stale_parts(prefix)
    examples.cache(part).reduce(np.int64(0), lambda count, _: count + 1)
    for path in tf.io.gfile.glob(part + ".data-*"):
      tf.io.gfile.rename(path, prefix + path[len(part):], overwrite=True)
    tf.io.gfile.rename(part + ".index", prefix + ".index", overwrite=True)
  except (OSError, tf.errors.OpError) as e:
    message = (getattr(e, "message", None) or str(e)).strip().splitlines()
    raise ValueError(f"cannot write the tf.data cache {prefix!r}: "
                     f"{message[0] if message else type(e).__name__}") from None
  return examples.cache(prefix)
