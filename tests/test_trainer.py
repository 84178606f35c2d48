"""End-to-end tests of `python -m trainers.train`: train, resume, export, plot, bad input."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--num_steps=2", "--hidden=16"]


def _train(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "trainers.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _train_forked(*args):
  """`_train`, in a process forked from the trainer server (tests/trainer_processes.py: the
  same run without its 7 s of imports). `_train`'s genuine `python -m` processes stay for the
  command-line cases below (bad input), which test the entry point itself."""
  from tests import trainer_processes  # pylint: disable=g-import-not-at-top
  proc = trainer_processes.start(args)
  out, err = proc.communicate(timeout=300)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _dirs(tmp_path):
  return str(tmp_path / "model"), str(tmp_path / "export")


def _scalars(event_dir):
  """{tag: [steps]} of the scalars in the event files under `event_dir`."""
  out = {}
  for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(event.step)
  return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A glow trained 20 steps on moons (two epochs of 10), then resumed to 30 steps."""
  model_dir, export_dir = _dirs(tmp_path_factory.mktemp("toy"))
  common = ["--model=glow", "--dataset=moons", "--batch_size=64", "--eval_every=10",
            f"--model_dir={model_dir}", f"--export_dir={export_dir}", *SMALL]
  first = _train_forked(*common, "--steps=20")
  assert first.returncode == 0, first.stderr[-3000:]
  files_after_first = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
  second = _train_forked(*common, "--steps=30", "--overwrite")
  assert second.returncode == 0, second.stderr[-3000:]
  return dict(model_dir=model_dir, export_dir=export_dir, first=first, second=second,
              files_after_first=files_after_first)


@pytest.mark.xdist_group("toy_run")   # the module fixture, computed once
def test_toy_run_writes_checkpoint_export_plots_and_logs(toy_run):
  model_dir, export_dir = toy_run["model_dir"], toy_run["export_dir"]
  assert "ckpt-20.index" in toy_run["files_after_first"]
  assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
  for name in ("density.png", "samples.png"):
    path = os.path.join(model_dir, name)
    assert os.path.getsize(path) > 1000 and open(path, "rb").read(4) == b"\x89PNG"
  train_scalars = _scalars(os.path.join(model_dir, "tensorboard", "train"))
  validation_scalars = _scalars(os.path.join(model_dir, "tensorboard", "validation"))
  assert sorted(train_scalars["nll"]) == [10, 20, 30]
  assert sorted(validation_scalars["nll"]) == [10, 20, 30]
  stdout = toy_run["first"].stdout
  assert "held-out NLL:" in stdout and export_dir in stdout
  assert os.path.join(model_dir, "density.png") in stdout


@pytest.mark.xdist_group("toy_run")   # the module fixture, computed once
def test_toy_run_resumes_from_the_checkpoint(toy_run):
  second = toy_run["second"].stdout
  assert "resuming from" in second and "(step 20)" in second
  assert "Epoch 3/3" in second and "Epoch 1/" not in second
  # ActNorm's data init ran once, in the first run; the resumed run restored it.
  assert "initialising ActNorm" in toy_run["first"].stdout
  assert "initialising ActNorm" not in second
  checkpoint = tf.train.load_checkpoint(os.path.join(toy_run["model_dir"], "checkpoints",
                                                     "ckpt-30"))
  assert checkpoint.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 30
  # The optimizer's first variable is its step counter (`iterations`).
  assert checkpoint.get_tensor("optimizer/v00000/.ATTRIBUTES/VARIABLE_VALUE") == 30


def test_mock_mnist_in_process(tmp_path):
  from trainers import train  # pylint: disable=g-import-not-at-top
  model_dir, export_dir = _dirs(tmp_path)
  config = train.Config(model="realnvp", dataset="mnist", data_dir=str(tmp_path / "tfds"),
                        model_dir=model_dir, export_dir=export_dir, steps=2, eval_every=2,
                        batch_size=4, num_levels=1, num_steps=1, hidden=8)
  with tfds.testing.mock_data(num_examples=8):
    result = train.run(config)
  assert result["step"] == 2 and np.isfinite(result["metrics"]["bits_per_dim"])
  assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
  assert result["plots"] == [os.path.join(model_dir, "samples.png")]
  assert os.path.getsize(result["plots"][0]) > 1000


def _run(train, config, kind):
  """`train.run(config)`, under TFDS's mock data for `kind == "tfds"`."""
  if kind == "tfds":
    with tfds.testing.mock_data(num_examples=16):
      return train.run(config)
  return train.run(config)


# Every model of the residual-flow issue on every kind of dataset, small and short.
NEW_MODELS = [
    ("resflow", "toy"), ("resflow", "tfds"), ("iresnet", "npy_images"),
    ("planar", "toy"), ("radial", "npy_vectors"), ("sylvester", "idx_images"),
]


@pytest.mark.parametrize("model,kind", NEW_MODELS)
def test_residual_and_simple_flows_in_the_trainer(tmp_path, model, kind):
  from trainers import train  # pylint: disable=g-import-not-at-top
  model_dir, export_dir = _dirs(tmp_path)
  rng = np.random.RandomState(0)
  dataset = {"toy": "checkerboard", "tfds": "mnist",
             "npy_images": lambda: _npy(tmp_path, rng.randint(0, 256, (24, 8, 8, 1), np.uint8)),
             "idx_images": lambda: _idx(tmp_path, rng.randint(0, 256, (24, 8, 8), np.uint8)),
             "npy_vectors": lambda: _npy(tmp_path, rng.randn(40, 3).astype("float32"))}[kind]
  dataset = dataset() if callable(dataset) else dataset
  image = kind in ("tfds", "npy_images", "idx_images")
  config = train.Config(model=model, dataset=dataset, data_dir=str(tmp_path / "tfds"),
                        model_dir=model_dir, export_dir=export_dir, steps=4, eval_every=2,
                        batch_size=8,
                        # one level: the multi-scale residual models are covered in
                        # test_residual_models.py; here the wiring to each dataset kind.
                        num_levels=1 if image and model in ("resflow", "iresnet") else None,
                        num_steps=1,
                        hidden=8)
  result = _run(train, config, kind)
  assert result["step"] == 4 and np.isfinite(result["metrics"]["nll"])
  assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
  assert all(os.path.getsize(p) > 1000 for p in result["plots"])
  diagnostics = _scalars(os.path.join(model_dir, "tensorboard", "diagnostics"))
  if model in ("resflow", "iresnet"):
    figures = {tag.split("/")[-1] for tag in diagnostics}
    assert figures == {"lipschitz", "series_terms", "logdet_std", "inverse_iterations",
                       "inverse_residual"}
    assert all(sorted(steps) == [2, 4] for steps in diagnostics.values())
    train_scalars = _scalars(os.path.join(model_dir, "tensorboard", "train"))
    assert "lipschitz_max" in train_scalars and "inverse_residual" in train_scalars
  else:
    assert not diagnostics


@pytest.mark.parametrize("model,kind", [("cif-resflow", "toy"), ("cif-realnvp", "npy_vectors"),
                                        ("cif-glow", "npy_images"), ("cif-realnvp", "tfds")])
def test_cif_models_in_the_trainer(tmp_path, model, kind):
  """CIF on a toy density, .npy vectors and images, and a TFDS image set: trained, evaluated
  by the K-sample estimate (--num_importance_samples), exported, plotted, with its health
  figures logged."""
  from trainers import train  # pylint: disable=g-import-not-at-top
  model_dir, export_dir = _dirs(tmp_path)
  rng = np.random.RandomState(0)
  dataset = {"toy": lambda: "rings", "tfds": lambda: "mnist",
             "npy_vectors": lambda: _npy(tmp_path, rng.randn(40, 2).astype("float32")),
             "npy_images": lambda: _npy(tmp_path, rng.randint(0, 256, (24, 8, 8, 1),
                                                                np.uint8))}[kind]()
  image = kind in ("tfds", "npy_images")
  config = train.Config(model=model, dataset=dataset, data_dir=str(tmp_path / "tfds"),
                        model_dir=model_dir, export_dir=export_dir, steps=4, eval_every=2,
                        batch_size=8, num_levels=2 if image else None, num_steps=1, hidden=8,
                        num_importance_samples=7)
  result = _run(train, config, kind)
  assert result["step"] == 4 and np.isfinite(result["metrics"]["nll"])
  if image:
    assert np.isfinite(result["metrics"]["bits_per_dim"])
    assert result["plots"] == [os.path.join(model_dir, "samples.png")]
  served = tf.saved_model.load(export_dir)
  assert sorted(served.signatures) == ["decode", "elbo", "encode", "log_prob", "log_prob_k",
                                       "sample", "serving_default"]
  assert int(served.default_num_samples.numpy()) == 7   # --num_importance_samples, recorded
  assert all(os.path.getsize(p) > 1000 for p in result["plots"])
  diagnostics = _scalars(os.path.join(model_dir, "tensorboard", "diagnostics"))
  figures = {tag.split("/")[-1] for tag in diagnostics}
  assert {"u_gap", "ess", "ess_fraction"} <= figures
  assert ("lipschitz" in figures) == (model == "cif-resflow")
  assert all(sorted(steps) == [2, 4] for steps in diagnostics.values())
  train_scalars = _scalars(os.path.join(model_dir, "tensorboard", "train"))
  assert {"u_gap", "ess", "elbo", "nll"} <= set(train_scalars)


def test_cif_flags_are_checked(tmp_path, capsys):
  model_dir, export_dir = _dirs(tmp_path)
  images = _npy(tmp_path, np.zeros((8, 8, 8, 1), np.uint8))
  cases = [
      (["--model=cif-realnvp", f"--dataset={images}", "--num_levels=4"],
       "image size 8x8 is not divisible by 2**num_levels = 16"),
      (["--model=realnvp", "--dataset=moons", "--num_importance_samples=10"],
       "num_importance_samples applies to the CIF models"),
      (["--model=cif-realnvp", "--dataset=moons", "--num_importance_samples=0"],
       "num_importance_samples"),
  ]
  for argv, message in cases:
    proc = _main_in_process([*argv, f"--model_dir={model_dir}", f"--export_dir={export_dir}"],
                            capsys)
    assert proc.returncode == 2, (argv, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (argv, proc.stderr)
    assert not os.path.exists(model_dir) and not os.path.exists(export_dir)


# --------------------------------------------------------------------------- bad input


def _idx(tmp_path, images):
  """`[N, H, W]` uint8 images as a gzipped IDX file, as MNIST is distributed."""
  import gzip  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "images-idx3-ubyte.gz")
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 3]) + np.array(images.shape, ">u4").tobytes() + images.tobytes())
  return path


def _npy(tmp_path, array):
  path = str(tmp_path / "data.npy")
  np.save(path, array)
  return path


def _main_in_process(argv, capsys):
  """Runs the command line in this process: (exit code, stderr)."""
  from trainers import train  # pylint: disable=g-import-not-at-top
  capsys.readouterr()
  try:
    with pytest.raises(SystemExit) as e:
      train.main(train._parse_flags(["train", *argv]))  # pylint: disable=protected-access
  finally:
    train.FLAGS.unparse_flags()
  return subprocess.CompletedProcess(argv, e.value.code, "", capsys.readouterr().err)


@pytest.mark.parametrize("case", ["zero_steps", "export_is_model_dir"])
def test_bad_input_on_the_command_line(tmp_path, case):
  """Cases of tests/test_bad_input.py in a fresh process: exit status 2, one line, no
  traceback, nothing written."""
  from tests import test_bad_input  # pylint: disable=g-import-not-at-top
  argv, keyword = test_bad_input.cli_argv(case, tmp_path)
  before = test_bad_input._listing(tmp_path)  # pylint: disable=protected-access
  result = _train(*argv)
  test_bad_input.assert_usage_error(result, keyword)
  assert test_bad_input._listing(tmp_path) == before  # pylint: disable=protected-access


def test_existing_export_dir_needs_overwrite(tmp_path):
  model_dir, export_dir = _dirs(tmp_path)
  os.makedirs(export_dir)
  result = _train_forked("--model=glow", "--dataset=moons", "--steps=1",
                         f"--model_dir={model_dir}",
                         f"--export_dir={export_dir}")
  _assert_usage_error(result, "--overwrite")
  assert not os.path.exists(model_dir) and os.listdir(export_dir) == []


@pytest.mark.xdist_group("toy_run")   # the module fixture, computed once
def test_checkpoint_of_another_model_is_rejected(toy_run, tmp_path, capsys):
  before = sorted(os.listdir(toy_run["model_dir"]))
  result = _main_in_process(["--model=nice", "--dataset=moons", "--steps=40",
                             "--eval_every=10", f"--model_dir={toy_run['model_dir']}",
                             f"--export_dir={tmp_path / 'e'}", *SMALL], capsys)
  _assert_usage_error(result, "--model=nice differs from the run")
  assert sorted(os.listdir(toy_run["model_dir"])) == before
  assert not os.path.exists(tmp_path / "e")


def _assert_usage_error(result, keyword):
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and keyword in last, result.stderr[-3000:]
  assert sum(line.startswith("error: ") for line in result.stderr.splitlines()) == 1


def test_help_lists_every_flag():
  from trainers import train  # pylint: disable=g-import-not-at-top
  text = train.FLAGS.module_help(train)
  for flag in ("model", "dataset", "steps", "batch_size", "model_dir", "export_dir",
               "data_dir", "learning_rate", "eval_every", "checkpoint_every", "num_levels",
               "num_steps", "hidden", "optimizer", "warmup_steps", "lr_decay", "clip_norm",
               "ema", "precision", "n_bits", "config", "overwrite", "seed"):
    assert f"--{flag}:" in text or f"--[no]{flag}:" in text, text


@pytest.mark.xdist_group("toy_run")   # the module fixture, computed once
def test_checkpoint_of_another_architecture_is_rejected(toy_run, tmp_path, capsys):
  """Without run.json (say, a checkpoint folder copied by hand) the shapes are checked."""
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "copy")
  shutil.copytree(toy_run["model_dir"], model_dir)
  os.remove(os.path.join(model_dir, "run.json"))
  before = sorted(os.listdir(model_dir))
  result = _main_in_process(["--model=nice", "--dataset=moons", "--steps=40",
                             "--eval_every=10", f"--model_dir={model_dir}",
                             f"--export_dir={tmp_path / 'e'}", *SMALL], capsys)
  _assert_usage_error(result, "does not match the model")
  assert sorted(os.listdir(model_dir)) == before and not os.path.exists(tmp_path / "e")
