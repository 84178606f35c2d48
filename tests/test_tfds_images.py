"""Tests of the TFDS image sets, n-bit dequantization and caching, offline (`mock_data`)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfpflows import data
from tfpflows.data import images

NAMED = [
    ("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
    ("celeb_a", (64, 64, 3)), ("imagenet32", (32, 32, 3)), ("imagenet64", (64, 64, 3)),
    ("downsampled_imagenet/32x32", (32, 32, 3)),
    ("kmnist", (28, 28, 1)),  # any other TFDS image set: as stored
]


def _load(tmp_path, name, num_examples=6, **kwargs):
  """`load_data(name)` under mock data: the training batches 0..2 and the held-out set."""
  kwargs.setdefault("batch_size", 4)
  with tfds.testing.mock_data(num_examples=num_examples):
    flow = data.load_data(name, data_dir=str(tmp_path / "tfds"), **kwargs)
    train = [b.numpy() for b in flow.train.take(3)]
    heldout = np.concatenate([b.numpy() for b in flow.heldout])
  return flow, train, heldout


@pytest.mark.parametrize("name, shape", NAMED)
def test_named_sets_give_dequantized_batches_of_their_shape(tmp_path, name, shape):
  flow, train, heldout = _load(tmp_path, name)
  assert flow.is_image and flow.event_shape == shape and flow.n_bits == 8
  for x in train + [heldout]:
    assert x.dtype == np.float32 and x.shape[1:] == shape
    assert x.min() >= 0.0 and x.max() < 256.0 and not np.all(x == np.floor(x))
  assert all(x.shape[0] == 4 for x in train) and heldout.shape[0] == 6


def test_aliases_resolve_to_downsampled_imagenet():
  assert images.resolve_name("imagenet32") == "downsampled_imagenet/32x32"
  assert images.resolve_name("imagenet64") == "downsampled_imagenet/64x64"
  assert images.resolve_name("mnist") == "mnist"


@pytest.mark.parametrize("name, splits", [
    ("celeb_a", ["train", "test"]), ("imagenet32", ["train", "validation"]),
    ("cifar10", ["train", "test"])])
def test_named_sets_read_their_splits_in_a_fixed_order(tmp_path, name, splits):
  calls = []

  def as_dataset(self, **kwargs):
    calls.append((kwargs["split"], kwargs["shuffle_files"],
                  kwargs["read_config"].interleave_cycle_length))
    shape = (218, 178, 3) if name == "celeb_a" else (32, 32, 3)
    return tf.data.Dataset.from_tensor_slices({"image": np.zeros((3,) + shape, np.uint8)})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    data.load_data(name, batch_size=2, data_dir=str(tmp_path))
  assert calls == [(split, False, 1) for split in splits]


def test_celeb_a_is_the_central_148_crop_area_resized_to_64():
  image = np.zeros((218, 178, 3), np.uint8)  # outside the window: 0
  image[35:183, 15:89] = 10                  # the window's left half
  image[35:183, 89:163] = 250                # its right half
  out = images.central_crop_resize(tf.constant(image)).numpy()
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  assert np.all(out[:, :32] == 10) and np.all(out[:, 32:] == 250)
  ramp = np.zeros((218, 178, 3), np.uint8)   # column 15 + i of the window holds i
  ramp[:, 15:163] = np.arange(148, dtype=np.uint8)[None, :, None]
  out = images.central_crop_resize(tf.constant(ramp)).numpy().astype(float)
  # Output column k averages input columns [2.3125 k, 2.3125 (k + 1)) of the window.
  np.testing.assert_allclose(out[:, :, 1], np.tile((np.arange(64) + 0.5) * 2.3125 - 0.5,
                                                   (64, 1)), atol=0.65)


def test_downsampled_imagenet_images_of_the_right_size_are_kept_as_they_are():
  image = np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)
  np.testing.assert_array_equal(images.fixed_size(tf.constant(image), size=32).numpy(), image)
  assert images.fixed_size(tf.constant(image[:20]), size=32).shape == (32, 32, 3)


# --------------------------------------------------------------------------- n_bits


def _source(q, reads=None):
  """An `as_dataset_fn` for `mock_data`: every split holds the images `q` `[N, H, W, C]`;
  with `reads`, each example read adds 1 to `reads[split]`."""
  def as_dataset(self, **kwargs):
    split, ds = kwargs["split"], tf.data.Dataset.from_tensor_slices(q)
    if reads is not None:
      def read(x):
        reads[split] = reads.get(split, 0) + 1
        return x
      ds = ds.map(lambda x: tf.ensure_shape(tf.py_function(read, [x], tf.uint8), q.shape[1:]))
    return ds.map(lambda x: {"image": x})
  return as_dataset


def _on_grid(x, n_bits):
  step = 2.0 ** (8 - n_bits)
  levels = np.floor(x / step)
  assert np.all((x >= 0.0) & (x < 256.0))
  assert len(np.unique(levels)) <= 2 ** n_bits and levels.max() < 2 ** n_bits
  return levels, x - levels * step


@pytest.mark.parametrize("n_bits", [5, 8])
def test_tfds_n_bits_puts_values_on_the_n_bit_grid(tmp_path, n_bits):
  q = np.random.RandomState(2).randint(0, 256, (6, 28, 28, 1)).astype(np.uint8)
  with tfds.testing.mock_data(as_dataset_fn=_source(q)):
    flow = data.load_data("mnist", batch_size=6, n_bits=n_bits, data_dir=str(tmp_path))
    train = [b.numpy() for b in flow.train.take(3)]
    heldout = np.concatenate([b.numpy() for b in flow.heldout])
  assert flow.n_bits == n_bits
  for x in train + [heldout]:
    _, noise = _on_grid(x, n_bits)
    assert noise.max() > 0.5 * 2 ** (8 - n_bits)  # the noise fills the bin, not one level
  levels, _ = _on_grid(heldout, n_bits)            # the levels are q >> (8 - n_bits)
  np.testing.assert_array_equal(levels, q >> (8 - n_bits))
  np.testing.assert_array_equal(np.sort(np.floor(train[0] / 2 ** (8 - n_bits)), axis=None),
                                np.sort(q >> (8 - n_bits), axis=None))  # one epoch


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  path.write_bytes(header + array.tobytes())
  return str(path)


@pytest.mark.parametrize("kind", ["npy", "idx"])
def test_npy_and_idx_images_take_n_bits(tmp_path, kind):
  q = np.random.RandomState(1).randint(0, 256, (20, 4, 4, 1)).astype(np.uint8)
  if kind == "npy":
    np.save(tmp_path / "x.npy", q)
    path = str(tmp_path / "x.npy")
  else:
    path = _write_idx(tmp_path / "x-idx3-ubyte", q[..., 0])
  flow = data.load_data(path, batch_size=5, n_bits=3)
  assert flow.n_bits == 3
  levels, _ = _on_grid(np.concatenate([b.numpy() for b in flow.heldout]), 3)
  np.testing.assert_array_equal(levels, q[18:] >> 5)
  _on_grid(next(iter(flow.train)).numpy(), 3)


def test_dequantize_n_bits_stays_inside_each_bin_even_when_u_rounds_up():
  q = tf.constant(np.array([0, 7, 8, 255], np.uint8))
  for n_bits in range(1, 9):
    step = 2 ** (8 - n_bits)
    x = data.dequantize(tf.tile(q, [4000]), seed=tf.constant([0, n_bits]),
                        n_bits=n_bits).numpy()
    levels = np.tile(q.numpy() // step, 4000).astype(np.float32)
    assert np.all((x >= levels * step) & (x < (levels + 1) * step))
  # 255 + u rounds to 256 in float32 for u > 1 - 2**-17: about 8 of 2**20 draws here.
  seed, shape = tf.constant([0, 0]), [2 ** 20]
  u = tf.random.stateless_uniform(shape, seed=seed).numpy()
  assert np.sum(np.float32(255.0) + u == 256.0) > 0
  x = data.dequantize(tf.fill(shape, np.uint8(255)), seed=seed).numpy()
  assert x.max() == np.nextafter(np.float32(256.0), np.float32(0.0)) and x.min() >= 255.0


@pytest.mark.parametrize("n_bits", [0, 9, 3.5, -1, True, "5", None])
def test_bad_n_bits_is_a_one_line_error(n_bits):
  with pytest.raises(ValueError) as e:
    data.load_data("moons", batch_size=4, n_bits=n_bits)
  message = str(e.value)
  assert "\n" not in message and "n_bits" in message and "1..8" in message
  assert repr(n_bits) in message


def test_n_bits_other_than_8_on_vectors_is_a_one_line_error(tmp_path):
  np.save(tmp_path / "v.npy", np.zeros((10, 3)))
  for name in ["moons", str(tmp_path / "v.npy")]:
    with pytest.raises(ValueError) as e:
      data.load_data(name, batch_size=4, n_bits=5)
    message = str(e.value)
    assert "\n" not in message and "n_bits=8" in message and "got 5" in message
  assert data.load_data("moons", batch_size=4, n_bits=np.int64(8)).n_bits == 8


def test_bits_per_dim_converts_256_units_to_the_n_bit_scale():
  flow = data.FlowData(train_from=None, heldout=None, event_shape=(4, 4, 1), is_image=True,
                       n_bits=5)
  assert flow.bits_per_dim(4.5) == 1.5
  assert data.FlowData(None, None, (2,), False).bits_per_dim(4.5) == 4.5
  assert data.n_bit_bits_per_dim(4.5, 8) == 4.5
  np.testing.assert_allclose(data.n_bit_bits_per_dim(np.array([3.0, 4.0]), 1), [-4.0, -3.0])
  # A uniform density on [0, 256)^D has 8 bits/dim in 256 units and n bits/dim on n bits.
  assert data.n_bit_bits_per_dim(8.0, 5) == 5.0


# --------------------------------------------------------------------------- determinism


def test_tfds_streams_are_fixed_by_the_seed_and_resume_exactly(tmp_path):
  q = np.random.RandomState(3).randint(0, 256, (10, 32, 32, 3)).astype(np.uint8)
  with tfds.testing.mock_data(as_dataset_fn=_source(q)):
    load = lambda seed: data.load_data("cifar10", batch_size=4, seed=seed, n_bits=5,
                                       data_dir=str(tmp_path))
    flow, again, other = load(3), load(3), load(4)
    first = [b.numpy() for b in flow.train_from(0).take(7)]  # 2.8 epochs
    np.testing.assert_array_equal(np.stack(first),
                                  np.stack([b.numpy() for b in again.train.take(7)]))
    for start in (1, 5):
      resumed = [b.numpy() for b in flow.train_from(start).take(7 - start)]
      np.testing.assert_array_equal(np.stack(resumed), np.stack(first[start:]))
    assert not np.array_equal(first[0], next(iter(other.train)).numpy())


# --------------------------------------------------------------------------- caching


def _counted_source(reads, shape=(4, 4, 1), num_examples=6):
  """An `as_dataset_fn` whose examples count their reads in `reads[split]`."""
  q = np.arange(num_examples * np.prod(shape)).reshape((num_examples,) + shape) % 256
  return _source(q.astype(np.uint8), reads)


@pytest.mark.parametrize("cache, reads_of_4_epochs", [(None, 24), ("memory", 6)])
def test_memory_cache_reads_the_training_split_once(tmp_path, cache, reads_of_4_epochs):
  reads = {}
  with tfds.testing.mock_data(as_dataset_fn=_counted_source(reads)):
    flow = data.load_data("mnist", batch_size=3, cache=cache, data_dir=str(tmp_path))
    list(flow.train.take(8))            # 4 epochs of 6
    list(flow.train_from(2).take(2))    # a second stream: epoch 1 again
  if cache is None:   # every epoch re-read (prefetching may read a little further ahead)
    assert reads["train"] >= reads_of_4_epochs + 6
  else:
    assert reads["train"] == reads_of_4_epochs


def test_auto_cache_keeps_small_sets_in_memory():
  assert images.cache_mode("auto", 60_000, (28, 28, 1)) == "memory"         # mnist
  assert images.cache_mode("auto", 50_000, (32, 32, 3)) == "memory"         # cifar10
  assert images.cache_mode("auto", 162_770, (64, 64, 3)) is None            # celeb_a
  assert images.cache_mode("auto", 1_281_167, (32, 32, 3)) is None          # imagenet32
  assert images.cache_mode("auto", -2, (28, 28, 1)) is None                 # unknown size
  assert images.cache_mode("memory", 10**9, (64, 64, 3)) == "memory"


def test_file_cache_is_written_once_and_read_by_later_runs(tmp_path):
  folder, reads = tmp_path / "cache", {}
  # A dead process's half-written cache: swept, its lock does not block this run.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  folder.mkdir()
  with tfds.testing.mock_data(num_examples=1):
    version = tfds.builder("mnist", data_dir=str(tmp_path)).info.version
  stale = folder / f"mnist_{version}-train-as-stored.part-{images._host()}-{dead}_0.lockfile"
  stale.write_text("Created at: 0")
  with tfds.testing.mock_data(as_dataset_fn=_counted_source(reads)):
    flow = data.load_data("mnist", batch_size=3, cache=str(folder), data_dir=str(tmp_path))
    assert reads == {"train": 6}  # written in full before load_data returns
    first = [b.numpy() for b in flow.train.take(6)]
  assert reads == {"train": 6}
  names = sorted(os.listdir(folder))
  assert not stale.exists() and not [n for n in names if ".part-" in n]
  index = [n for n in names if n.endswith(".index")]
  assert len(index) == 1 and index[0].startswith("mnist_") and "-train-" in index[0]
  with tfds.testing.mock_data(as_dataset_fn=_counted_source(reads)):  # a later run
    again = data.load_data("mnist", batch_size=3, cache=str(folder), data_dir=str(tmp_path))
    np.testing.assert_array_equal(np.stack([b.numpy() for b in again.train.take(6)]),
                                  np.stack(first))
  assert reads == {"train": 6}


@pytest.mark.parametrize("cache", [3, "", ["memory"]])
def test_bad_cache_is_a_one_line_error(cache):
  with pytest.raises(ValueError) as e:
    data.load_data("mnist", batch_size=2, cache=cache)
  assert "\n" not in str(e.value) and "cache" in str(e.value)


def test_cache_folder_that_is_a_file_is_a_one_line_error(tmp_path):
  (tmp_path / "file").write_text("")
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError) as e:
      data.load_data("mnist", batch_size=2, cache=str(tmp_path / "file"),
                     data_dir=str(tmp_path))
  assert "\n" not in str(e.value) and "is a file" in str(e.value)
