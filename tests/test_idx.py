"""IDX files (the MNIST format): reading, gzip, the split, validation, and the real MNIST file."""

import gzip
import re
import os

import numpy as np
import pytest

from tfpflows import data

MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                     "shared", "data", "mnist", "t10k-images-idx3-ubyte.gz")
_CODES = {np.dtype("uint8"): 0x08, np.dtype("int16"): 0x0B, np.dtype("float32"): 0x0D,
          np.dtype("float64"): 0x0E}


def _idx_bytes(array):
  """An independent writer: magic, big-endian sizes, big-endian values."""
  header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(tmp_path, name, array=None, raw=None, gz=False):
  raw = _idx_bytes(array) if raw is None else raw
  path = tmp_path / name
  path.write_bytes(gzip.compress(raw) if gz else raw)
  return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx3_images_read_exactly_with_a_channel_axis_and_the_npy_split(tmp_path, gz):
  images = np.random.default_rng(0).integers(0, 256, (30, 6, 4), dtype=np.uint8)
  path = _write(tmp_path, "train-images-idx3-ubyte" + (".gz" if gz else ""), images, gz=gz)
  np.testing.assert_array_equal(data.read_idx(path), images)
  train, heldout = data.load_idx(path)
  assert train.dtype == np.uint8 and train.shape == (27, 6, 4, 1) and heldout.shape == (3, 6, 4, 1)
  np.save(tmp_path / "same.npy", images[..., None])
  for a, b in zip((train, heldout), data.load_npy(str(tmp_path / "same.npy"))):
    np.testing.assert_array_equal(a, b)     # the split of .npy files, in file order


def test_gzip_is_detected_by_its_bytes_and_big_endian_values_convert(tmp_path):
  vectors = np.random.default_rng(1).standard_normal((20, 3)).astype("float32")
  path = _write(tmp_path, "vectors.idx", vectors, gz=True)          # no .gz in the name
  out = data.read_idx(path)
  assert out.dtype == np.float32 and out.dtype.byteorder in ("=", "<", "|")
  np.testing.assert_array_equal(out, vectors)
  flow = data.load_data(path, batch_size=4)
  assert flow.event_shape == (3,) and not flow.is_image


def test_load_data_reads_idx_images_as_dequantized_pipelines(tmp_path):
  images = np.random.default_rng(2).integers(0, 256, (20, 8, 8), dtype=np.uint8)
  flow = data.load_data(_write(tmp_path, "x-idx3-ubyte.gz", images, gz=True), batch_size=5)
  assert flow.is_image and flow.event_shape == (8, 8, 1)
  batch = next(iter(flow.train)).numpy()
  assert batch.shape == (5, 8, 8, 1) and 0 <= batch.min() and batch.max() < 256
  assert np.all(np.floor(batch).astype(int) == batch.astype(int))   # dequantized in-level
  assert sum(int(b.shape[0]) for b in flow.heldout) == 2


@pytest.mark.parametrize("make,message", [
    (lambda t: _write(t, "labels-idx1-ubyte", np.zeros(10, np.uint8)), "holds 10 labels (idx1)"),
    (lambda t: _write(t, "a-idx3-ubyte", raw=_idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-3]),
     "holds 29 bytes; its header (4 x 2 x 2 of uint8) says 32: truncated"),
    (lambda t: _write(t, "b-idx3-ubyte", raw=b"\x00\x00\x08"), "is not an IDX file"),
    (lambda t: _write(t, "c-idx3-ubyte", raw=b"\x12\x34\x08\x03" + bytes(12)),
     "is not an IDX file"),
    (lambda t: _write(t, "d-idx3-ubyte", raw=b"\x00\x00\x08\x03\x00"), "is truncated"),
    (lambda t: _write(t, "e-idx3-ubyte.gz", raw=gzip.compress(b"\x00" * 100)[:20]),
     "cannot read"),
    (lambda t: str(t / "missing-idx3-ubyte.gz"), "does not exist"),
    (lambda t: _write(t, "f-idx3-ubyte", np.zeros((4, 2, 2), np.float32)), "must be uint8"),
    (lambda t: _write(t, "g-idx3-ubyte", np.zeros((2, 2, 2), np.uint8)), "need at least 3"),
])
def test_bad_idx_files_are_one_line(tmp_path, make, message):
  with pytest.raises(ValueError, match=re.escape(message)) as info:
    data.load_data(make(tmp_path), batch_size=2)
  assert "\n" not in str(info.value)


@pytest.mark.skipif(not os.path.exists(MNIST), reason="the shared MNIST test split is absent")
def test_the_mnist_test_split():
  images = data.read_idx(MNIST)
  assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
  assert images.min() == 0 and images.max() == 255
  with gzip.open(MNIST) as f:    # the first image's pixels, straight from the file
    np.testing.assert_array_equal(images[0].reshape(-1),
                                  np.frombuffer(f.read(16 + 784)[16:], np.uint8))
  train, heldout = data.load_idx(MNIST)
  assert train.shape == (9000, 28, 28, 1) and heldout.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(heldout[:, :, :, 0], images[9000:])
