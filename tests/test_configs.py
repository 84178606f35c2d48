"""`--config` presets: each builds and trains a couple of steps at reduced size with its
recipe; flags beside `--config` override it; the trainer records the resolved settings."""

import json
import math
import subprocess

import keras
import numpy as np
import pytest

from tfpflows import data as flow_data
from tfpflows import recipes, training
from trainers import configs, train

SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
SMALL_SHAPES = {"mnist": (8, 8, 1), "cifar10": (16, 16, 3)}   # 2x2 pixels at the last level


def test_every_preset_names_its_source_and_a_known_model():
  assert {"glow_mnist", "glow_cifar10", "realnvp_cifar10", "resflow_mnist", "resflow_cifar10",
          "iresnet_cifar10", "cif_resflow_cifar10"} <= set(configs.NAMES)
  for name, preset in configs.PRESETS.items():
    assert preset.flags["model"] in train.MODELS, name
    assert preset.source and preset.dataset in SHAPES, name
    unknown = set(preset.flags) - {f for f in train.Config.__dataclass_fields__}
    assert not unknown, (name, unknown)
  assert "| `glow_cifar10` | glow | 3 x 32, 512 | adamax 0.001" in configs.describe()


def test_given_flags_override_the_preset():
  values = configs.resolve("resflow_cifar10", {"hidden": 64, "ema": 0.0})
  assert values["hidden"] == 64 and values["ema"] == 0.0
  assert values["num_steps"] == 16 and values["warmup_steps"] == 1000
  with pytest.raises(ValueError, match="unknown --config 'nope'"):
    configs.resolve("nope", {})


@pytest.mark.parametrize("name", configs.NAMES)
def test_preset_trains_two_steps_at_reduced_size(name, tmp_path):
  """The preset's model family, levels, optimizer, schedule, EMA and precision, with one
  step per level of width 8, 4 small images per batch."""
  preset = configs.PRESETS[name]
  shape = SMALL_SHAPES[preset.dataset]
  images = np.random.RandomState(0).randint(0, 256, (12, *shape)).astype(np.uint8)
  np.save(tmp_path / "images.npy", images)
  # A warm-up of 1 step: the papers' 1,000-step warm-up moves weights by ~1e-6 at first,
  # below float32's resolution for some of them.
  values = configs.resolve(name, dict(dataset=str(tmp_path / "images.npy"), num_steps=1,
                                      hidden=8, batch_size=4, steps=2,
                                      warmup_steps=min(1, preset.flags.get("warmup_steps", 0))))
  if values["model"].startswith("cif"):
    values["num_importance_samples"] = 2
  config = train.Config(**dict(values, model_dir=str(tmp_path / "m"),
                               export_dir=str(tmp_path / "e")))
  data = train.load_data(config)
  keras.utils.set_random_seed(0)
  model = train.build_compiled_model(config, data.event_shape)
  model.initialize(next(iter(data.train)))
  before = [v.numpy().copy() for v in model.trainable_variables]
  history = training.fit_steps(model, data.train_from, steps=2, eval_every=2, verbose=0)
  assert training.steps_done(model) == 2
  assert all(math.isfinite(v) for v in history["loss"])
  changed = sum(not np.array_equal(b, v.numpy())
                for b, v in zip(before, model.trainable_variables))
  assert changed == len(before), (name, changed, len(before))
  assert recipes.uses_ema(model) == bool(values.get("ema"))
  inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
  assert type(inner).__name__.lower() == values["optimizer"]
  if values.get("precision", "float32") != "float32":
    assert any(layer.dtype_policy.compute_dtype == values["precision"][len("mixed_"):]
               for layer in model._flatten_layers())


def test_command_line_preset_with_overrides(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (40, 28, 28, 1)).astype(np.uint8)
  np.save(tmp_path / "mnist.npy", images)
  from tests import trainer_processes  # pylint: disable=g-import-not-at-top
  proc = trainer_processes.start(
      ["--config=glow_mnist_cpu", f"--dataset={tmp_path / 'mnist.npy'}", "--steps=3",
       "--num_steps=1", "--hidden=8", "--batch_size=8", "--eval_every=3", "--warmup_steps=2",
       f"--model_dir={tmp_path / 'm'}", f"--export_dir={tmp_path / 'e'}"])
  out, err = proc.communicate(timeout=300)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  assert result.returncode == 0, result.stderr[-3000:]
  run = json.load(open(tmp_path / "m" / "run.json"))
  preset = configs.PRESETS["glow_mnist_cpu"].flags
  assert run["config"] == "glow_mnist_cpu"
  assert (run["num_steps"], run["hidden"], run["steps"], run["warmup_steps"]) == (1, 8, 3, 2)
  for key in ("model", "num_levels", "optimizer", "learning_rate", "precision", "ema"):
    assert run[key] == preset[key], key
  assert "bits/dim" in result.stdout.strip().splitlines()[-1]
