"""Tests of tfpflows.data: toy densities, .npy validation, dequantization, TFDS pipelines."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfpflows import data


# --------------------------------------------------------------------------- toy densities


@pytest.mark.parametrize("name", data.TOY_NAMES)
def test_toy_sample_shape_dtype_and_determinism(name):
  x = data.toy_sample(name, 500, seed=7)
  assert x.shape == (500, 2) and x.dtype == tf.float32
  assert np.all(np.isfinite(x.numpy()))
  np.testing.assert_array_equal(x.numpy(), data.toy_sample(name, 500, seed=7).numpy())
  assert not np.allclose(x.numpy(), data.toy_sample(name, 500, seed=8).numpy())
  # Centred roughly at the origin and spread over a few units, as in FFJORD's plots.
  assert np.all(np.abs(x.numpy().mean(axis=0)) < 1.0)
  assert np.all((x.numpy().std(axis=0) > 0.5) & (x.numpy().std(axis=0) < 4.0))


def test_toy_sample_accepts_a_seed_pair_and_works_in_tf_function():
  seed = tf.constant([3, 4], tf.int32)
  eager = data.toy_sample("rings", 64, seed=seed)
  graph = tf.function(lambda s: data.toy_sample("rings", 64, seed=s))(seed)
  np.testing.assert_allclose(eager.numpy(), graph.numpy(), rtol=1e-6)


def test_toy_dataset_batches_are_fresh_draws_fixed_by_the_seed():
  ds = data.toy_dataset("moons", batch_size=32, seed=5)
  first, second = [b.numpy() for b in ds.take(2)]
  assert first.shape == (32, 2) and first.dtype == np.float32
  assert not np.allclose(first, second)
  np.testing.assert_array_equal(first, data.toy_sample("moons", 32, seed=5).numpy())
  again = [b.numpy() for b in data.toy_dataset("moons", batch_size=32, seed=5).take(2)]
  np.testing.assert_array_equal(second, again[1])


def test_unknown_toy_name_lists_the_valid_names():
  with pytest.raises(ValueError) as e:
    data.toy_sample("swissroll", 10)
  message = str(e.value)
  assert "\n" not in message and "'swissroll'" in message
  assert all(name in message for name in data.TOY_NAMES)


def test_checkerboard_is_uniform_on_the_eight_unit_squares():
  n = 16_000
  x = data.toy_sample("checkerboard", n, seed=0).numpy().astype(np.float64)
  assert np.all((x >= -2.0) & (x < 2.0))
  cell = np.floor(x).astype(int)  # (i, j) in {-2..1}^2
  assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0), "a point fell on a dark square"
  # Equal mass on the 8 squares: chi-square, 7 dof, 0.999 quantile 24.3.
  _, counts = np.unique(cell[:, 0] * 4 + cell[:, 1], return_counts=True)
  assert len(counts) == 8
  assert np.sum((counts - n / 8) ** 2 / (n / 8)) < 24.3
  # Uniform inside the squares: a 4x4 grid of the fractional parts, 15 dof, 0.999 q. 37.7.
  sub = np.floor((x - np.floor(x)) * 4).astype(int)
  counts = np.bincount(sub[:, 0] * 4 + sub[:, 1], minlength=16)
  assert np.sum((counts - n / 16) ** 2 / (n / 16)) < 37.7


def _grid_log_prob(name, half_width=4.5, spacing=0.02):
  """toy_log_prob on the midpoints of a square grid, in chunks; returns (log p, cell area)."""
  edges = np.arange(-half_width, half_width, spacing) + spacing / 2
  g = np.stack(np.meshgrid(edges, edges), axis=-1).reshape(-1, 2).astype(np.float32)
  lp = np.concatenate([data.toy_log_prob(name, g[i:i + 20_000]).numpy()
                       for i in range(0, len(g), 20_000)])
  return lp.astype(np.float64), spacing ** 2


@pytest.mark.parametrize("name", ["moons", "eight_gaussians", "checkerboard", "rings"])
def test_toy_log_prob_integrates_to_one_and_matches_the_sampler(name):
  lp, area = _grid_log_prob(name)
  p = np.exp(lp)
  assert abs(p.sum() * area - 1.0) < 2e-3, p.sum() * area
  # The sampler's draws have the mean log-density the formula says: E_p[log p] by
  # quadrature on the grid against the mean over 20,000 draws (within 4 standard errors).
  entropy = -np.sum(p * np.where(p > 0, lp, 0.0)) * area
  x = data.toy_sample(name, 20_000, seed=3)
  lx = data.toy_log_prob(name, x).numpy().astype(np.float64)
  assert np.all(np.isfinite(lx)), "a draw fell where the formula says p = 0"
  se = max(lx.std() / np.sqrt(len(lx)), 1e-6)
  assert abs(-lx.mean() - entropy) < 4 * se + 2e-3, (-lx.mean(), entropy, se)


def test_toy_log_prob_values_and_errors():
  np.testing.assert_allclose(data.toy_log_prob("checkerboard", [[0.5, 0.5], [1.5, 0.5]]),
                             [-np.log(8.0), -np.inf])
  for name in ("moons", "eight_gaussians", "checkerboard", "rings"):   # NaN in, NaN out
    assert np.isnan(data.toy_log_prob(name, [[np.nan, 0.5]]).numpy()[0]), name
  # A ring point at its radius: the Rice density's peak, about 1/4 of 1/(2 pi r) per unit
  # length across a Gaussian of s = 0.08, i.e. log(1/4 / (2 pi 3) / (sqrt(2 pi) 0.08)).
  peak = data.toy_log_prob("rings", tf.constant([[3.0, 0.0]], tf.float64)).numpy()[0]
  assert abs(peak - np.log(0.25 / (2 * np.pi * 3.0) / (np.sqrt(2 * np.pi) * 0.08))) < 0.01
  for bad, word in ((("pinwheel", [[0.0, 0.0]]), "pinwheel"),
                    (("moons", [0.0, 0.0, 0.0]), "[..., 2]"),
                    (("swissroll", [[0.0, 0.0]]), "swissroll")):
    with pytest.raises(ValueError) as e:
      data.toy_log_prob(*bad)
    assert "\n" not in str(e.value) and word in str(e.value)


# --------------------------------------------------------------------------- .npy files


def _save(tmp_path, array, name="x.npy"):
  path = str(tmp_path / name)
  np.save(path, array)
  return path


def test_npy_vectors_are_split_with_the_last_tenth_held_out(tmp_path):
  array = np.arange(40, dtype=np.float64).reshape(20, 2)
  train, heldout = data.load_npy(_save(tmp_path, array))
  assert train.dtype == np.float32 and train.shape == (18, 2) and heldout.shape == (2, 2)
  np.testing.assert_array_equal(np.concatenate([train, heldout]), array)
  train, heldout = data.load_npy(_save(tmp_path, np.ones((3, 2))))
  assert train.shape == (2, 2) and heldout.shape == (1, 2)


def test_npy_images_stay_uint8(tmp_path):
  train, heldout = data.load_npy(_save(tmp_path, np.zeros((10, 4, 4, 3), np.uint8)))
  assert train.dtype == np.uint8 and train.shape == (9, 4, 4, 3) and heldout.shape[0] == 1


def _garbage(tmp_path):
  path = tmp_path / "garbage.npy"
  path.write_bytes(b"this is not a numpy file")
  return str(path)


@pytest.mark.parametrize("make_path, keyword", [
    (lambda tmp: str(tmp / "missing.npy"), "does not exist"),
    (_garbage, "cannot read"),
    (lambda tmp: _save(tmp, np.array([None, 1], dtype=object)), "cannot read"),
    (lambda tmp: _save(tmp, np.zeros((10, 4, 4))), "shape"),
    (lambda tmp: _save(tmp, np.zeros(10)), "shape"),
    (lambda tmp: _save(tmp, np.array([[0.0, 1.0]] * 9 + [[np.nan, 0.0]])), "NaN"),
    (lambda tmp: _save(tmp, np.array([[0.0, 1.0]] * 9 + [[np.inf, 0.0]])), "Inf"),
    (lambda tmp: _save(tmp, np.zeros((10, 2), bool)), "dtype"),
    (lambda tmp: _save(tmp, np.zeros((10, 4, 4, 1), np.float32)), "uint8"),
    (lambda tmp: _save(tmp, np.zeros((10, 4, 4, 2), np.uint8)), "channels"),
    (lambda tmp: _save(tmp, np.zeros((2, 2))), "rows"),
])
def test_npy_validation_errors_are_one_line(tmp_path, make_path, keyword):
  with pytest.raises(ValueError) as e:
    data.load_npy(make_path(tmp_path))
  assert keyword in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- dequantization


def test_dequantize_maps_each_level_into_its_unit_interval():
  q = tf.constant(np.tile(np.array([0, 1, 128, 254, 255], np.uint8), 2000))
  x = data.dequantize(q, seed=tf.constant([1, 2])).numpy()
  assert x.dtype == np.float32
  levels = q.numpy().astype(np.float32)
  assert np.all((x >= levels) & (x < levels + 1.0))
  assert x.min() >= 0.0 and x.max() < 256.0
  frac = x - levels
  assert 0.45 < frac.mean() < 0.55 and frac.min() < 0.01 and frac.max() > 0.99
  np.testing.assert_array_equal(x, data.dequantize(q, seed=tf.constant([1, 2])).numpy())
  assert not np.array_equal(x, data.dequantize(q, seed=tf.constant([1, 3])).numpy())


def test_npy_image_pipelines_dequantize(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (30, 4, 4, 1)).astype(np.uint8)
  flow = data.load_data(_save(tmp_path, images), batch_size=8, seed=0)
  assert flow.is_image and flow.event_shape == (4, 4, 1)
  batches = [b.numpy() for b in flow.train.take(5)]
  assert all(b.shape == (8, 4, 4, 1) and b.dtype == np.float32 for b in batches)
  assert all(b.min() >= 0.0 and b.max() < 256.0 for b in batches)
  assert not np.all(batches[0] == np.floor(batches[0]))  # noise was added
  heldout = [np.concatenate([b.numpy() for b in flow.heldout]) for _ in range(2)]
  assert heldout[0].shape == (3, 4, 4, 1)
  np.testing.assert_array_equal(heldout[0], heldout[1])  # fixed noise for evaluation
  np.testing.assert_array_equal(np.floor(heldout[0]), images[27:])


def test_npy_vector_pipelines(tmp_path):
  vectors = np.random.RandomState(0).randn(50, 3)
  flow = data.load_data(_save(tmp_path, vectors), batch_size=16, seed=0)
  assert not flow.is_image and flow.event_shape == (3,) and flow.reference is None
  batch = next(iter(flow.train)).numpy()
  assert batch.shape == (16, 3) and batch.dtype == np.float32
  assert np.all(np.isin(batch, vectors.astype(np.float32)))  # no noise on vectors
  assert sum(b.shape[0] for b in flow.heldout) == 5


def test_toy_load_data_has_a_fixed_heldout_set():
  flow = data.load_data("eight_gaussians", batch_size=100, seed=0)
  other = data.load_data("eight_gaussians", batch_size=100, seed=1)
  assert flow.event_shape == (2,) and not flow.is_image and flow.reference.shape[1] == 2
  np.testing.assert_array_equal(next(iter(flow.heldout)).numpy(),
                                next(iter(other.heldout)).numpy())
  assert not np.array_equal(next(iter(flow.train)).numpy(), next(iter(other.train)).numpy())


# --------------------------------------------------------------------------- TFDS


def test_tfds_mnist_pipeline_with_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    flow = data.load_data("mnist", batch_size=8, seed=0, data_dir=str(tmp_path))
    assert flow.is_image and flow.event_shape == (28, 28, 1)
    batches = [b.numpy() for b in flow.train.take(4)]  # 4 batches of 8 > 20: repeats
    heldout = [np.concatenate([b.numpy() for b in flow.heldout]) for _ in range(2)]
  for batch in batches:
    assert batch.shape == (8, 28, 28, 1) and batch.dtype == np.float32
    assert batch.min() >= 0.0 and batch.max() < 256.0
    assert not np.all(batch == np.floor(batch))
  assert heldout[0].shape == (20, 28, 28, 1)
  np.testing.assert_array_equal(heldout[0], heldout[1])


def test_tfds_dataset_without_images_is_rejected(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(ValueError, match="no 'image' feature"):
      data.load_data("imdb_reviews", batch_size=2, data_dir=str(tmp_path))


def test_unknown_dataset_name_is_one_line():
  with pytest.raises(ValueError) as e:
    data.load_data("no_such_dataset_xyz", batch_size=2)
  message = str(e.value)
  assert "\n" not in message and "'no_such_dataset_xyz'" in message and ".npy" in message
  assert "moons" in message
