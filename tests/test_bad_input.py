"""One table of bad inputs, across the trainer and the Python API.

Every case asserts the exit status (trainer: 2) or the exception type (API), a single line
naming the problem, no traceback, and that the files under the test's folder are exactly
those there before (listed recursively, with sizes).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpflows import vi
from tests.test_trainer import _assert_usage_error as assert_usage_error
from tests.test_trainer import _main_in_process


def _npy(tmp, array, name="data.npy"):
  path = str(tmp / name)
  np.save(path, array)
  return path


def _file(tmp, name, content=b""):
  path = tmp / name
  os.makedirs(path.parent, exist_ok=True)
  path.write_bytes(content)
  return str(path)


def _run_json(tmp, **changes):
  settings = dict(model="nice", dataset="moons", batch_size=64, seed=0, num_levels=None,
                  num_steps=None, hidden=None)
  settings.update(changes)
  _file(tmp, "model/run.json", json.dumps(settings).encode())
  return []


def _corrupt_checkpoints(tmp):
  _file(tmp, "model/checkpoints/checkpoint",
        b'model_checkpoint_path: "ckpt-5"\nall_model_checkpoint_paths: "ckpt-5"\n')
  _file(tmp, "model/checkpoints/ckpt-5.index", b"not a checkpoint index")
  _file(tmp, "model/checkpoints/ckpt-5.data-00000-of-00001", b"\0" * 10)
  return []


MODEL, EXPORT = "--model_dir={tmp}/model", "--export_dir={tmp}/export"

# Trainer cases: name -> (setup(tmp) -> extra flags, flags, key words of the message).
# `{tmp}` in flags is the test's folder; model and export folders are added unless given.
CLI = {
    "unknown_model": (None, ["--model=foo", "--dataset=moons"], "--model 'foo'"),
    "missing_model": (None, ["--dataset=moons"], "--model is required"),
    "unknown_dataset": (None, ["--model=nice", "--dataset=no_such_dataset_xyz"],
                        "unknown dataset"),
    "missing_npy": (None, ["--model=nice", "--dataset={tmp}/nothing.npy"], "does not exist"),
    "missing_gz": (None, ["--model=glow", "--dataset={tmp}/t10k-images.gz"], "does not exist"),
    "npy_with_nan": (lambda tmp: [f"--dataset={_npy(tmp, np.array([[0.0, 1.0]] * 9 + [[np.nan, 0.0]]))}"],
                     ["--model=nice"], "NaN"),
    "npy_with_inf": (lambda tmp: [f"--dataset={_npy(tmp, np.array([[0.0, 1.0]] * 9 + [[0.0, np.inf]]))}"],
                     ["--model=nice"], "Inf"),
    "npy_wrong_rank": (lambda tmp: [f"--dataset={_npy(tmp, np.zeros((10, 4, 4), np.float32))}"],
                       ["--model=nice"], "has shape (10, 4, 4)"),
    "npy_empty_file": (lambda tmp: [f"--dataset={_file(tmp, 'empty.npy')}"], ["--model=nice"],
                       "is empty (0 bytes)"),
    "npy_garbage": (lambda tmp: [f"--dataset={_file(tmp, 'bad.npy', b'hello')}"],
                    ["--model=nice"], "cannot read"),
    "npy_zero_width": (lambda tmp: [f"--dataset={_npy(tmp, np.zeros((10, 0), np.float32))}"],
                       ["--model=nice"], "every event dimension must be >= 1"),
    "idx_labels": (lambda tmp: [f"--dataset={_file(tmp, 'labels-idx1-ubyte', bytes([0, 0, 8, 1, 0, 0, 0, 4]) + bytes(4))}"],
                   ["--model=glow"], "holds 4 labels (idx1)"),
    "idx_truncated": (lambda tmp: [f"--dataset={_file(tmp, 'x-idx3-ubyte', bytes([0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0, 8]) + bytes(100))}"],
                      ["--model=glow"], "truncated or not one IDX array"),
    "dataset_is_a_directory": (lambda tmp: [f"--dataset={tmp}"], ["--model=nice"],
                               "is a directory"),
    "dataset_not_npy": (lambda tmp: [f"--dataset={_file(tmp, 'data.csv', b'1,2')}"],
                        ["--model=nice"], "is not a .npy or IDX file"),
    "float_images": (lambda tmp: [f"--dataset={_npy(tmp, np.zeros((10, 8, 8, 1), np.float32))}"],
                     ["--model=glow"], "uint8"),
    "indivisible_images": (lambda tmp: [f"--dataset={_npy(tmp, np.zeros((10, 6, 6, 1), np.uint8))}"],
                           ["--model=glow", "--num_levels=2"], "divisible"),
    "vector_batch_of_one": (None, ["--model=glow", "--dataset=moons", "--batch_size=1"],
                            "batch_size"),
    "zero_steps": (None, ["--model=glow", "--dataset=moons", "--steps=0"], "steps"),
    "zero_num_steps": (None, ["--model=glow", "--dataset=moons", "--num_steps=0"], "num_steps"),
    "zero_hidden": (None, ["--model=glow", "--dataset=moons", "--hidden=0"], "hidden"),
    "zero_checkpoint_every": (None, ["--model=glow", "--dataset=moons",
                                     "--checkpoint_every=0"], "checkpoint_every"),
    "learning_rate_inf": (None, ["--model=glow", "--dataset=moons", "--learning_rate=inf"],
                          "--learning_rate must be a finite number > 0; got inf"),
    "learning_rate_nan": (None, ["--model=glow", "--dataset=moons", "--learning_rate=nan"],
                          "--learning_rate must be a finite number > 0; got nan"),
    "learning_rate_negative": (None, ["--model=glow", "--dataset=moons",
                                      "--learning_rate=-0.1"], "--learning_rate"),
    "export_is_model_dir": (None, ["--model=glow", "--dataset=moons", "--overwrite",
                                   "--export_dir={tmp}/model"], "same folder"),
    "export_inside_model_dir": (None, ["--model=glow", "--dataset=moons",
                                       "--export_dir={tmp}/model/export"],
                                "--export_dir '{tmp}/model/export' is inside --model_dir"),
    "model_dir_inside_export": (None, ["--model=glow", "--dataset=moons", "--overwrite",
                                       "--model_dir={tmp}/export/model"],
                                "--model_dir '{tmp}/export/model' is inside --export_dir"),
    "model_dir_is_a_file": (lambda tmp: [_file(tmp, "model") and []][0],
                            ["--model=glow", "--dataset=moons"], "is not a directory"),
    "model_dir_under_a_file": (lambda tmp: [_file(tmp, "blocker") and []][0],
                               ["--model=glow", "--dataset=moons",
                                "--model_dir={tmp}/blocker/model"], "is a file, not a directory"),
    "export_dir_under_a_file": (lambda tmp: [_file(tmp, "blocker") and []][0],
                                ["--model=glow", "--dataset=moons",
                                 "--export_dir={tmp}/blocker/export"], "is a file"),
    "existing_export_without_overwrite": (lambda tmp: [os.makedirs(tmp / "export") or []][0],
                                          ["--model=glow", "--dataset=moons"], "--overwrite"),
    "resume_with_another_batch_size": (lambda tmp: _run_json(tmp, batch_size=32),
                                       ["--model=nice", "--dataset=moons"],
                                       "--batch_size=64 differs from the run"),
    "resume_with_another_dataset": (lambda tmp: _run_json(tmp, dataset="rings"),
                                    ["--model=nice", "--dataset=moons"],
                                    "--dataset=moons differs from the run"),
    "corrupt_run_file": (lambda tmp: [_file(tmp, "model/run.json", b"{") and []][0],
                         ["--model=nice", "--dataset=moons"], "cannot read"),
    "corrupt_checkpoint_index": (lambda tmp: [_file(tmp, "model/checkpoints/checkpoint",
                                                    b"\xff\xfe garbage {") and []][0],
                                 ["--model=nice", "--dataset=moons"], "is corrupt"),
    "only_checkpoint_corrupt": (_corrupt_checkpoints, ["--model=nice", "--dataset=moons"],
                                "ckpt-5 is corrupt"),
    "unexpected_argument": (None, ["--model=nice", "--dataset=moons", "extra"],
                            "unexpected arguments: extra"),
    "unknown_config": (None, ["--config=glow_imagenet", "--dataset=moons"],
                       "unknown --config 'glow_imagenet'; expected one of glow_mnist"),
    "clip_norm_negative": (None, ["--model=glow", "--dataset=moons", "--clip_norm=-1"],
                           "--clip_norm must be a finite number > 0; got -1.0"),
    "ema_one": (None, ["--model=glow", "--dataset=moons", "--ema=1"],
                "--ema must be 0 (off) or a momentum in (0, 1); got 1.0"),
    "decay_shorter_than_warmup": (None, ["--model=glow", "--dataset=moons", "--steps=100",
                                         "--warmup_steps=100", "--lr_decay=cosine"],
                                  "need --steps > --warmup_steps"),
    "unknown_optimizer": (None, ["--model=glow", "--dataset=moons", "--optimizer=sgd"],
                          "--optimizer"),
    "n_bits_nine": (None, ["--model=glow", "--dataset=moons", "--n_bits=9"], "n_bits"),
    "precision_float16": (None, ["--model=glow", "--dataset=moons",
                                 "--precision=mixed_float16"], "--precision"),
    "resume_with_another_optimizer": (lambda tmp: _run_json(tmp, optimizer="adamax"),
                                      ["--model=nice", "--dataset=moons"],
                                      "--optimizer=adam differs from the run"),
    "resume_with_another_precision": (lambda tmp: _run_json(tmp, precision="mixed_bfloat16"),
                                      ["--model=nice", "--dataset=moons"],
                                      "--precision=float32 differs from the run"),
}


def _listing(root):
  return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(root) for f in files) + sorted(
                    os.path.relpath(d, root) for d, _, _ in os.walk(root))


def cli_argv(case, tmp):
  setup, flags, keyword = CLI[case]
  extra = setup(tmp) if setup else []
  flags = [f.format(tmp=tmp) for f in flags] + extra
  for default in (MODEL, EXPORT):
    if not any(f.startswith(default.split("=")[0] + "=") for f in flags):
      flags.append(default.format(tmp=tmp))
  return [*flags, "--steps=1"] if not any(f.startswith("--steps=") for f in flags) else flags, \
      keyword.format(tmp=tmp)


# --------------------------------------------------------------------------- Python API

# One xdist worker for the module: the `models` fixture is then built once.
pytestmark = pytest.mark.xdist_group("bad_input_models")


@pytest.fixture(scope="module")
def models():
  from tfpflows.models import build_flow  # pylint: disable=g-import-not-at-top
  glow = build_flow("glow", (2,), num_steps=2, hidden=8)
  resflow = build_flow("resflow", (2,), num_steps=1, hidden=8)
  resflow.compile(optimizer=keras.optimizers.Adam(1e-3))
  return dict(glow=glow, resflow=resflow)


def _build(**kwargs):
  from tfpflows.models import build_flow  # pylint: disable=g-import-not-at-top
  return lambda m, tmp: build_flow(**{"name": "glow", "event_shape": (2,), **kwargs})


def _export(m, tmp, **kwargs):
  from tfpflows.export import export_saved_model  # pylint: disable=g-import-not-at-top
  return export_saved_model(m["glow"], tmp / "export", **kwargs)


def _export_nan(m, tmp):
  from tfpflows.models import build_flow  # pylint: disable=g-import-not-at-top
  model = build_flow("nice", (2,), num_steps=1, hidden=4)
  model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.nan))
  from tfpflows.export import export_saved_model  # pylint: disable=g-import-not-at-top
  return export_saved_model(model, tmp / "export")


def _load_data(name):
  from tfpflows import data  # pylint: disable=g-import-not-at-top
  return lambda m, tmp: data.load_data(name(tmp) if callable(name) else name, batch_size=4)


# name -> (call(models, tmp), exception type, key words of the message)
API = {
    "log_prob_last_axis_1": (lambda m, tmp: m["glow"].log_prob(tf.zeros([4, 1])), ValueError,
                             "log_prob: expected events of shape [2]"),
    "log_prob_extra_axis": (lambda m, tmp: m["glow"].log_prob(tf.zeros([4, 2, 1])), ValueError,
                            "got shape [4, 2, 1]"),
    "log_prob_wrong_size": (lambda m, tmp: m["glow"].log_prob(np.zeros([4, 3])), ValueError,
                            "got shape [4, 3]"),
    "log_prob_scalar": (lambda m, tmp: m["resflow"].log_prob(0.0), ValueError, "got shape []"),
    "encode_wrong_size": (lambda m, tmp: m["resflow"].encode(tf.zeros([4, 3])), ValueError,
                          "encode: expected events of shape [2]"),
    "decode_wrong_size": (lambda m, tmp: m["glow"].decode(tf.zeros([3])), ValueError,
                          "decode: expected events of shape [2]"),
    "sample_negative_n": (lambda m, tmp: m["glow"].sample(-1), ValueError,
                          "sample: n must be an integer >= 0; got -1"),
    "sample_float_n": (lambda m, tmp: m["glow"].sample(2.5), ValueError, "n must be an integer"),
    "sample_negative_temperature": (lambda m, tmp: m["glow"].sample(3, temperature=-1.0),
                                    ValueError, "temperature must be a finite number > 0; got -1.0"),
    "sample_nan_temperature": (lambda m, tmp: m["resflow"].sample(3, temperature=float("nan")),
                               ValueError, "got nan"),
    "sample_inf_temperature": (lambda m, tmp: m["glow"].sample(3, temperature=np.inf),
                               ValueError, "got inf"),
    "sample_zero_temperature": (lambda m, tmp: m["glow"].sample(3, temperature=0),
                                ValueError, "got 0.0"),
    "build_zero_num_steps": (_build(num_steps=0), ValueError, "num_steps must be a positive"),
    "build_zero_hidden": (_build(hidden=0), ValueError, "hidden must be a positive integer"),
    "build_negative_hidden": (_build(name="resflow", hidden=-3), ValueError, "got -3"),
    "build_zero_levels": (_build(event_shape=(8, 8, 1), num_levels=0), ValueError,
                          "num_levels must be a positive"),
    "build_zero_event_dim": (_build(event_shape=(0,)), ValueError, "event_shape"),
    "build_unknown_model": (_build(name="maf"), ValueError, "unknown model 'maf'"),
    "build_unknown_placement": (_build(name="planar", placement="latent"), ValueError,
                                "placement must be one of 'density', 'sample'; got 'latent'"),
    "build_placement_for_coupling": (_build(placement="sample"), ValueError,
                                     "glow is explicit in both directions"),
    "build_zero_base_components": (_build(base_components=0), ValueError,
                                   "base_components must be a positive integer; got 0"),
    "build_unknown_affine_scale": (_build(affine_scale="softplus"), ValueError,
                                   "affine_scale must be one of sigmoid, exp; got 'softplus'"),
    "build_affine_scale_for_nice": (_build(name="nice", affine_scale="exp"), ValueError,
                                    "applies to glow and realnvp"),
    "build_step_actnorm_for_resflow": (_build(name="resflow", step_actnorm=False), ValueError,
                                       "step_actnorm=False applies to glow and realnvp"),
    "build_unknown_shift_side": (_build(shift_side="middle"), ValueError,
                                 "shift_side must be one of data, latent; got 'middle'"),
    "build_shift_side_for_cif": (_build(name="cif-realnvp", shift_side="latent"), ValueError,
                                 "shift_side='latent' applies to glow and realnvp only; "
                                 "got cif-realnvp"),
    "surrogate_glow_latent_shift": (lambda m, tmp: vi.build_surrogate("glow", [2],
                                                                      shift_side="latent"),
                                    ValueError, "shift_side='latent' with glow"),
    "build_mixture_base_for_images": (_build(event_shape=(8, 8, 1), base_components=3),
                                      ValueError, "applies to vector events"),
    "surrogate_for_images": (lambda m, tmp: vi.build_surrogate("realnvp", [4, 4, 1]),
                             ValueError, "event_shape must be [D]"),
    "surrogate_zero_scale": (lambda m, tmp: vi.build_surrogate("planar", [2],
                                                               initial_scale=0.),
                             ValueError, "initial_scale must be > 0"),
    "surrogate_wrong_loc_length": (lambda m, tmp: vi.build_surrogate("planar", [2],
                                                                     initial_loc=[1., 2., 3.]),
                                   ValueError, "initial_loc must be a number or a vector"),
    "elbo_zero_batch_size": (lambda m, tmp: vi.elbo(lambda x: -tf.reduce_sum(x ** 2, -1),
                                                    m["glow"].distribution(), batch_size=0),
                             ValueError, "batch_size must be a positive integer; got 0"),
    "surrogate_integer_event_shape": (lambda m, tmp: vi.build_surrogate("realnvp", 2),
                                      ValueError, "event_shape must be [D]"),
    "fit_surrogate_zero_steps": (lambda m, tmp: vi.fit_surrogate(
        lambda x: -tf.reduce_sum(x ** 2, -1), m["glow"], num_steps=0), ValueError,
                                 "num_steps must be a positive integer; got 0"),
    "fit_surrogate_unknown_estimator": (lambda m, tmp: vi.fit_surrogate(
        lambda x: -tf.reduce_sum(x ** 2, -1), m["glow"], num_steps=1,
        gradient_estimator="dreg"), ValueError,
        "gradient_estimator must be one of 'auto', 'stl', 'reparameterized'; got 'dreg'"),
    "live_distribution_wrong_event_shape": (
        lambda m, tmp: m["glow"].distribution().log_prob(np.zeros([3, 5], "float32")),
        ValueError, "flow: expected events of shape [2], i.e. an input of shape [..., 2]; "
                    "got shape [3, 5]"),
    "stopped_distribution_wrong_event_shape": (
        lambda m, tmp: m["resflow"].distribution(stop_gradient=True).log_prob(
            np.zeros([4, 3], "float32")),
        ValueError, "flow_stopped: expected events of shape [2]"),
    "initialize_nan_batch": (lambda m, tmp: m["glow"].initialize(
        np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]])), ValueError,
                             "initialize: expected a batch of finite values"),
    "initialize_inf_batch": (lambda m, tmp: m["resflow"].initialize(
        np.array([[0.0, 1.0], [np.inf, 2.0]])), ValueError, "1 NaN or infinite"),
    "initialize_unbatched": (lambda m, tmp: m["glow"].initialize(np.zeros([2])), ValueError,
                             "initialize: expected a batch of shape [batch, 2]"),
    "initialize_batch_of_one": (lambda m, tmp: m["glow"].initialize(np.zeros([1, 2])),
                                ValueError, "too small"),
    "sample_weight_with_neumann_gradient": (lambda m, tmp: m["resflow"].fit(
        np.random.randn(8, 2).astype("float32"), sample_weight=np.ones(8, "float32"),
        batch_size=4, epochs=1, verbose=0), ValueError, "sample_weight: resflow_flow uses the "
                                            "Neumann log-det gradient"),
    "export_existing": (_export, FileExistsError, "already exists"),
    "export_nan_weights": (_export_nan, ValueError, "not finite"),
    "load_empty_npy": (_load_data(lambda tmp: str(tmp / "empty.npy")), ValueError, "is empty"),
    "load_directory": (_load_data(lambda tmp: str(tmp)), ValueError, "is a directory"),
}


CASES = [("cli", name) for name in sorted(CLI)] + [("api", name) for name in sorted(API)]


def test_the_table_is_large_enough():
  assert len(CASES) >= 30 and len(API) >= 15 and len(CLI) >= 15


@pytest.mark.parametrize("kind,case", CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_bad_input(kind, case, tmp_path, capsys, models):
  if kind == "cli":
    argv, keyword = cli_argv(case, tmp_path)
    before = _listing(tmp_path)
    assert_usage_error(_main_in_process(argv, capsys), keyword)
  else:
    call, error, keyword = API[case]
    if case == "export_existing":
      os.makedirs(tmp_path / "export")
    if case == "load_empty_npy":
      _file(tmp_path, "empty.npy")
    before = _listing(tmp_path)
    with pytest.raises(error) as info:
      call(models, tmp_path)
    message = str(info.value)
    assert "\n" not in message and keyword in message, message
    assert "Traceback" not in message
  assert _listing(tmp_path) == before


def test_unwritable_model_dir(tmp_path, capsys, monkeypatch):
  """A folder without write permission. Root writes anywhere, so as root (CI) the
  permission check itself is made to fail for that folder."""
  locked = tmp_path / "locked"
  os.makedirs(locked)
  os.chmod(locked, 0o555)
  if os.geteuid() == 0:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.realpath(path) == str(locked) else real_access(path, mode)))
  before = _listing(tmp_path)
  result = _main_in_process(["--model=nice", "--dataset=moons", "--steps=1",
                             f"--model_dir={locked}/model", f"--export_dir={tmp_path}/export"],
                            capsys)
  assert_usage_error(result, f"--model_dir '{locked}/model' cannot be created: '{locked}' is "
                     "not writable")
  assert _listing(tmp_path) == before


def test_saved_model_sample_checks_its_arguments(tmp_path, models):
  from tfpflows.export import export_saved_model  # pylint: disable=g-import-not-at-top
  path = export_saved_model(models["glow"], tmp_path / "served")
  served = tf.saved_model.load(path)
  assert served.sample(tf.constant(3), tf.constant(0.5)).shape == (3, 2)
  for n, temperature in ((3, -1.0), (3, float("nan")), (3, float("inf")), (-2, 1.0)):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
      served.sample(tf.constant(n), tf.constant(temperature))
    assert "sample: " in str(info.value)
