"""`python -m trainers.evaluate`: held-out NLL with intervals, estimators, samples, bad input.

Three tiny runs of the trainer, once per module (in process): an exact 2D flow, an exact
image flow on a .npy file, and a CIF model (importance-sampled, a stochastic estimator).
"""

import json
import os
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf

from tests.test_bad_input import _listing
from tests.test_trainer import _assert_usage_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One xdist worker for the module: the `runs` fixture is then built once.
pytestmark = pytest.mark.xdist_group("evaluate_runs")


def _train(tmp, name, model, dataset, **kwargs):
  from trainers import train  # pylint: disable=g-import-not-at-top
  model_dir, export_dir = str(tmp / f"{name}_model"), str(tmp / f"{name}_export")
  config = train.Config(model=model, dataset=dataset, model_dir=model_dir,
                        export_dir=export_dir, **kwargs)
  result = train.run(config)
  return dict(model_dir=model_dir, export_dir=export_dir, dataset=dataset,
              batch_size=config.batch_size, metrics=result["metrics"])


def _build_runs(tmp):
  """The module's runs (JSON-serialisable: shared between xdist workers, see `runs`)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  # A fresh process (mostly imports), started first so that it overlaps the training.
  cli_model_dir = str(tmp / "cli_model")
  cli = subprocess.Popen([sys.executable, "-m", "trainers.evaluate",
                          f"--model_dir={cli_model_dir}", "--temperatures=hot"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  rng = np.random.RandomState(0)
  images = str(tmp / "images.npy")
  np.save(images, rng.randint(0, 256, (40, 8, 8, 1), np.uint8))   # 4 held out
  vectors = str(tmp / "vectors.npy")
  np.save(vectors, rng.randn(60, 2).astype("float32"))             # 6 held out
  vectors_3d = str(tmp / "vectors_3d.npy")
  np.save(vectors_3d, rng.randn(40, 3).astype("float32"))
  common = dict(steps=2, eval_every=2, num_steps=1, hidden=8)
  runs = dict(
      toy=_train(tmp, "toy", "glow", "moons", batch_size=256, **common),
      # With a moving average of the weights: evaluated with it, as the trainer does.
      image=_train(tmp, "image", "realnvp", images, batch_size=8, num_levels=1, ema=0.5,
                   learning_rate=0.01, **common),
      cif=_train(tmp, "cif", "cif-realnvp", vectors, batch_size=8,
                 num_importance_samples=5, **common),
      images=images, vectors=vectors, vectors_3d=vectors_3d, cli_model_dir=cli_model_dir)
  stdout, stderr = cli.communicate(timeout=120)
  runs["cli"] = dict(returncode=cli.returncode, stdout=stdout, stderr=stderr)
  return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    return _build_runs(tmp_path_factory.mktemp("evaluate"))
  # Under xdist the workers share one build: the first builds it under a lock, the others
  # read it. (`--dist loadgroup` does not group tests with pytest 9: xdist 3.8 renames
  # `item._nodeid`, which pytest 9 no longer reads, so every worker may get some.)
  import fcntl  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp().parent / "evaluate_runs"
  root.mkdir(exist_ok=True)
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = root / "runs.json"
    if not done.exists():
      built = _build_runs(root)
      done.write_text(json.dumps(built))
    return json.loads(done.read_text())


def _evaluate(**kwargs):
  from trainers import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.run(evaluate.EvalConfig(**kwargs))


def _export_kwargs(run, out):
  return dict(export_dir=run["export_dir"], dataset=run["dataset"],
              batch_size=run["batch_size"], output_dir=str(out))


@pytest.mark.parametrize("kind", ["toy", "image"])
def test_model_dir_and_export_dir_give_the_trainers_nll(runs, kind, tmp_path):
  run = runs[kind]
  from_run = _evaluate(model_dir=run["model_dir"], output_dir=str(tmp_path / "a"),
                       num_samples=4)
  assert from_run["estimator"] == "exact" and not from_run["stochastic"]
  assert from_run["repeats"] == 1 and from_run["estimator_se"] == 0.0
  np.testing.assert_allclose(from_run["nll"], run["metrics"]["nll"], rtol=1e-5)
  served = _evaluate(**_export_kwargs(run, tmp_path / "b"), num_samples=4)
  assert served["estimator"] == "exact"
  np.testing.assert_allclose(served["nll"], from_run["nll"], rtol=1e-6)
  assert served["num_examples"] == from_run["num_examples"]
  if kind == "image":
    assert from_run["source"]["ema"] == 0.5
    np.testing.assert_allclose(from_run["bits_per_dim"], run["metrics"]["bits_per_dim"],
                               rtol=1e-5)
    np.testing.assert_allclose(served["bits_per_dim"], from_run["bits_per_dim"], rtol=1e-6)
  else:
    assert "bits_per_dim" not in from_run


def test_interval_is_mean_plus_minus_1_96_standard_errors(runs, tmp_path):
  """The test computes the per-example NLLs itself, from the SavedModel."""
  from trainers import train  # pylint: disable=g-import-not-at-top
  run = runs["image"]
  result = _evaluate(model_dir=run["model_dir"], output_dir=str(tmp_path), num_samples=0)
  served = tf.saved_model.load(run["export_dir"])
  data = train.load_data(train.config_from_run(run["model_dir"]))
  nll = np.concatenate([-served.log_prob(x).numpy() for x in data.heldout]).astype(np.float64)
  n = len(nll)
  half = 1.96 * nll.std(ddof=1) / np.sqrt(n)
  assert result["num_examples"] == n == 4
  np.testing.assert_allclose(result["nll"], nll.mean(), rtol=1e-6)
  low, high = result["nll_ci95"]
  assert low < result["nll"] < high
  np.testing.assert_allclose([low, high], [nll.mean() - half, nll.mean() + half], rtol=1e-6)
  scale = 1 / (64 * np.log(2))
  np.testing.assert_allclose(result["bits_per_dim_ci95"], [low * scale, high * scale],
                             rtol=1e-9)
  assert result["samples"] == [] and "no samples" in result["samples_note"]


@pytest.mark.parametrize("kind", ["toy", "image"])
def test_writes_json_and_png_into_the_model_dir(runs, kind, tmp_path):
  model_dir = str(tmp_path / "copy")
  shutil.copytree(runs[kind]["model_dir"], model_dir)
  result = _evaluate(model_dir=model_dir, temperatures=(0.5, 1.0), num_samples=9)
  with open(os.path.join(model_dir, "evaluation.json")) as f:
    saved = json.load(f)
  assert saved["nll"] == result["nll"] and saved["nll_ci95"] == result["nll_ci95"]
  assert saved["source"]["step"] == 2 and saved["temperatures"] == [0.5, 1.0]
  names = (["evaluation_samples.png"] if kind == "image" else
           ["evaluation_samples_T0.5.png", "evaluation_samples_T1.png"])
  assert saved["samples"] == [os.path.join(model_dir, name) for name in names]
  for path in saved["samples"]:
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert not [f for f in os.listdir(model_dir) if ".tmp-" in f]
  assert "samples.png" in os.listdir(model_dir)   # the trainer's plot is left alone


def test_vectors_of_other_sizes_have_no_sample_plot():
  from tfpflows.data import FlowData  # pylint: disable=g-import-not-at-top
  from trainers import evaluate  # pylint: disable=g-import-not-at-top
  data = FlowData(train_from=None, heldout=None, event_shape=(3,), is_image=False)
  samples, note = evaluate._samples(None, evaluate.EvalConfig(), data)  # pylint: disable=protected-access
  assert samples is None and "no sample plot for vectors of shape [3]" in note


def test_cif_reports_its_estimator_and_repeat_standard_error(runs, tmp_path):
  run = runs["cif"]
  first = _evaluate(model_dir=run["model_dir"], output_dir=str(tmp_path / "a"), repeats=3,
                    num_samples=16)
  assert first["stochastic"] and "importance-sampled" in first["estimator"]
  assert "K=5" in first["estimator"] and first["num_importance_samples"] == 5
  assert first["repeats"] == 3 and len(set(first["repeat_nll"])) == 3
  assert first["estimator_se"] > 0
  np.testing.assert_allclose(first["estimator_se"],
                             np.std(first["repeat_nll"], ddof=1) / np.sqrt(3), rtol=1e-9)
  np.testing.assert_allclose(first["nll"], np.mean(first["repeat_nll"]), rtol=1e-9)
  # Seeded from (--seed, repeat): the same figures again; another seed, other draws.
  again = _evaluate(model_dir=run["model_dir"], output_dir=str(tmp_path / "b"), repeats=2,
                    num_samples=0)
  assert again["repeat_nll"] == first["repeat_nll"][:2]
  other = _evaluate(model_dir=run["model_dir"], output_dir=str(tmp_path / "c"), repeats=2,
                    num_samples=0, seed=1, num_importance_samples=2)
  assert "K=2" in other["estimator"] and other["repeat_nll"][0] != first["repeat_nll"][0]
  # The SavedModel: no seed argument; its generator's state is set per repeat instead.
  served = _evaluate(**_export_kwargs(run, tmp_path / "d"), repeats=3, num_samples=16)
  assert served["stochastic"] and "importance-sampled" in served["estimator"]
  assert served["num_importance_samples"] == 5     # its log_prob's K: the run's
  assert "K=5" in served["estimator"] and "seed_note" not in served
  assert served["estimator_se"] > 0 and len(set(served["repeat_nll"])) == 3
  served_k = _evaluate(**_export_kwargs(run, tmp_path / "e"), repeats=2, num_samples=0,
                       num_importance_samples=3)
  assert "K=3" in served_k["estimator"] and served_k["repeat_nll"] != served["repeat_nll"][:2]


# --------------------------------------------------------------------------- bad input


def _main_in_process(argv, capsys):
  """The command line in this process: (exit code, stderr)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from trainers import evaluate  # pylint: disable=g-import-not-at-top
  global_parsed = flags.FLAGS.is_parsed()
  capsys.readouterr()
  try:
    with pytest.raises(SystemExit) as e:
      evaluate.main(evaluate._parse_flags(["evaluate", *argv]))  # pylint: disable=protected-access
  finally:
    evaluate.FLAGS.unparse_flags()
    if not global_parsed:
      flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess(argv, e.value.code, "", capsys.readouterr().err)


def _no_checkpoint(runs, tmp):
  os.makedirs(tmp / "bare")
  shutil.copy(os.path.join(runs["toy"]["model_dir"], "run.json"), tmp / "bare")
  return [f"--model_dir={tmp / 'bare'}"]


# name -> (flags, with {toy}, {cif}, {toy_export}, {images}, {vectors_3d}, {tmp}; or a
# setup(runs, tmp) returning flags; key words of the message)
BAD = {
    "both_dirs": (["--model_dir={toy}", "--export_dir={toy_export}", "--dataset=moons",
                   "--output_dir={tmp}/out"], "got both"),
    "neither_dir": (["--dataset=moons"], "exactly one of --model_dir"),
    "no_run_json": (lambda runs, tmp: [f"--model_dir={tmp}"], "holds no run.json"),
    "missing_model_dir": (["--model_dir={tmp}/nothing"], "does not exist"),
    "no_checkpoint": (_no_checkpoint, "holds no checkpoint"),
    "not_a_saved_model": (["--export_dir={toy}", "--dataset=moons", "--output_dir={tmp}/out"],
                          "is not a SavedModel"),
    "export_without_dataset": (["--export_dir={toy_export}", "--output_dir={tmp}/out"],
                               "--dataset is required"),
    "export_without_output_dir": (["--export_dir={toy_export}", "--dataset=moons"],
                                  "--output_dir is required"),
    "bad_temperatures": (["--model_dir={toy}", "--temperatures=0.5,warm"], "--temperatures"),
    "zero_temperature": (["--model_dir={toy}", "--temperatures=0"], "got '0'"),
    "zero_importance_samples": (["--model_dir={cif}", "--num_importance_samples=0"],
                                "num_importance_samples"),
    "importance_samples_not_cif": (["--model_dir={toy}", "--num_importance_samples=3"],
                                   "applies to the CIF models"),
    "zero_repeats": (["--model_dir={cif}", "--repeats=0"], "--repeats"),
    "unknown_dataset": (["--model_dir={toy}", "--dataset=no_such_dataset_xyz"],
                        "unknown dataset"),
    "other_event_shape": (["--model_dir={toy}", "--dataset={vectors_3d}"],
                          "events of shape [3]; the model's are [2]"),
    "other_event_shape_export": (["--export_dir={toy_export}", "--dataset={images}",
                                  "--output_dir={tmp}/out"], "the model's are [2]"),
    "output_dir_is_a_file": (["--model_dir={toy}", "--output_dir={images}"],
                             "is not a directory"),
    "positional": (["--model_dir={toy}", "extra"], "unexpected arguments: extra"),
}


def _argv(case, runs, tmp):
  spec, keyword = BAD[case]
  if callable(spec):
    return spec(runs, tmp), keyword
  names = dict(toy=runs["toy"]["model_dir"], cif=runs["cif"]["model_dir"],
               toy_export=runs["toy"]["export_dir"], images=runs["images"],
               vectors_3d=runs["vectors_3d"], tmp=tmp)
  return [f.format(**names) for f in spec], keyword


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(runs, case, tmp_path, capsys):
  argv, keyword = _argv(case, runs, tmp_path)
  watched = [tmp_path, runs["toy"]["model_dir"], runs["cif"]["model_dir"]]
  before = [_listing(str(d)) for d in watched]
  result = _main_in_process(argv, capsys)
  _assert_usage_error(result, keyword)
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert [_listing(str(d)) for d in watched] == before


def test_bad_input_in_a_fresh_process(runs):
  result = subprocess.CompletedProcess([], runs["cli"]["returncode"], runs["cli"]["stdout"],
                                       runs["cli"]["stderr"])
  _assert_usage_error(result, "--temperatures must be a comma-separated list")
  assert "got 'hot'" in result.stderr and not os.path.exists(runs["cli_model_dir"])


def test_help_lists_every_flag():
  from trainers import evaluate  # pylint: disable=g-import-not-at-top
  text = evaluate.FLAGS.get_help()
  for flag in ("model_dir", "export_dir", "dataset", "batch_size", "data_dir",
               "num_importance_samples", "temperatures", "num_samples", "repeats",
               "output_dir", "seed"):
    assert f"--{flag}:" in text, text
