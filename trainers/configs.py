"""`--config=NAME` presets: the papers' architectures and training recipes as trainer flags.

A preset is a set of flag values (`PRESETS[name].flags`); flags given on the command line
beside `--config` override it. Each preset names its source and the published bits/dim;
where the papers' setting does not fit this library exactly the note says what differs
(e.g. 28x28 MNIST allows only two multi-scale levels here: 28 = 7 * 2^2; Glow's code pads
MNIST to 32x32 for three).

The paper-scale presets are meant for accelerators: a step of `glow_cifar10` costs seconds
on a 2-core CPU. On a CPU pick `glow_mnist_cpu_bf16` where it computes bfloat16 natively
(AVX512-BF16 or AMX: `recipes.cpu_has_bfloat16()`), else `glow_mnist_cpu` (README, "MNIST").
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Preset:
  """One `--config`: trainer flag values and where they come from."""
  flags: dict
  source: str
  published_bpd: Optional[float] = None
  dataset: Optional[str] = None   # the data set the published figure is for
  note: str = ""


# Glow's code: Adamax, lr 1e-3, linear warm-up over 10 epochs; 3 levels of 32 steps, 512
# channels, affine coupling, LU 1x1 convolutions; batch 64 per GPU.
_GLOW = dict(model="glow", num_steps=32, hidden=512, optimizer="adamax",
             learning_rate=1e-3, batch_size=64, clip_norm=None)
# Residual Flows' code: Adam 1e-3, warm-up over 1,000 steps, EMA 0.999 of the weights for
# evaluation, batch 64; 16 blocks per level of 512 channels, LipSwish, c = 0.98.
_RESFLOW = dict(model="resflow", num_steps=16, hidden=512, optimizer="adam",
                learning_rate=1e-3, warmup_steps=1000, ema=0.999, batch_size=64)

# The CPU MNIST recipe; its bfloat16 preset differs only in precision and the decay.
_GLOW_MNIST_CPU = dict(model="glow", dataset="mnist", num_levels=2, num_steps=8, hidden=256,
                       optimizer="adam", learning_rate=1e-3, warmup_steps=0, batch_size=64,
                       steps=1200, ema=0.0, precision="float32")

PRESETS = {
    "glow_mnist": Preset(
        dict(_GLOW, dataset="mnist", num_levels=2, warmup_steps=9375, steps=200_000),
        source="Kingma & Dhariwal 2018 (Glow), MNIST", published_bpd=1.05, dataset="mnist",
        note="2 levels (28x28; Glow pads to 32x32 for 3); warm-up 10 epochs of 60,000"),
    "glow_cifar10": Preset(
        dict(_GLOW, dataset="cifar10", num_levels=3, warmup_steps=7800, steps=500_000),
        source="Kingma & Dhariwal 2018 (Glow), CIFAR-10", published_bpd=3.35,
        dataset="cifar10", note="warm-up 10 epochs of 50,000"),
    "realnvp_cifar10": Preset(
        dict(model="realnvp", dataset="cifar10", num_levels=3, num_steps=6, hidden=64,
             optimizer="adam", learning_rate=1e-3, batch_size=64, steps=500_000),
        source="Dinh, Sohl-Dickstein & Bengio 2017 (RealNVP), CIFAR-10",
        published_bpd=3.49, dataset="cifar10",
        note="6 couplings per level after the squeeze (masks: 2 checkerboard, 2 channel, "
             "2 checkerboard; RealNVP has 3 checkerboard before the squeeze and 3 channel "
             "after), 64 feature maps; our conditioner is Glow's 3-layer conv net, not "
             "RealNVP's residual networks; no L2 penalty"),
    "resflow_mnist": Preset(
        dict(_RESFLOW, dataset="mnist", num_levels=2, steps=200_000),
        source="Chen, Behrmann, Duvenaud & Jacobsen 2019 (Residual Flows), MNIST",
        published_bpd=0.97, dataset="mnist", note="2 levels (28x28) instead of 3"),
    "resflow_cifar10": Preset(
        dict(_RESFLOW, dataset="cifar10", num_levels=3, steps=500_000),
        source="Chen, Behrmann, Duvenaud & Jacobsen 2019 (Residual Flows), CIFAR-10",
        published_bpd=3.28, dataset="cifar10",
        note="no activation normalisation inside the blocks, no fully connected final blocks"),
    "iresnet_cifar10": Preset(
        dict(model="iresnet", dataset="cifar10", num_levels=3, num_steps=16, hidden=512,
             optimizer="adam", learning_rate=1e-3, warmup_steps=1000, batch_size=64,
             steps=500_000),
        source="Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen 2019 (i-ResNet), CIFAR-10",
        published_bpd=3.45, dataset="cifar10",
        note="ELU, c = 0.9, 5-term power series; the optimizer is Residual Flows' recipe "
             "(the i-ResNet paper's own optimizer settings were not rechecked)"),
    "cif_resflow_cifar10": Preset(
        dict(model="cif-resflow", dataset="cifar10", num_levels=3, num_steps=4, hidden=128,
             optimizer="adam", learning_rate=1e-3, batch_size=64, steps=500_000,
             num_importance_samples=10),
        source="Cornish, Caterini, Deligiannidis & Doucet 2020 (CIF), reference code's "
               "resflow-small CIF, CIFAR-10",
        published_bpd=3.334, dataset="cifar10",
        note="scales [4, 4, 4], 128 channels, s,t / p / q nets of two 3x3 convolutions of 32"),
    "glow_mnist_cpu": Preset(
        _GLOW_MNIST_CPU,
        source="tfpflows: the MNIST recipe for 20 minutes on 2 CPU cores (bench/mnist_bench.py)",
        dataset="mnist",
        note="Glow's MNIST shape (2 levels of 8 steps, 256 channels; ~1,000 steps in 20 "
             "minutes on the AVX2 CPU of those runs): 2.17 bits/dim against 2.67 for the "
             "4-step, 128-channel model with 4x the steps (README 'MNIST', runs 1 and 3); "
             "float32, since bfloat16 conditioners were 4x slower on a CPU without "
             "AVX512-BF16"),
    "glow_mnist_cpu_bf16": Preset(
        dict(_GLOW_MNIST_CPU, lr_decay="cosine", steps=6800, precision="mixed_bfloat16"),
        source="tfpflows: glow_mnist_cpu with bfloat16 conditioners (bench/mnist_bench.py)",
        dataset="mnist",
        note="for x86 CPUs with AVX512-BF16 or AMX (`grep -o -E 'avx512_bf16|amx_bf16' "
             "/proc/cpuinfo`): conditioners in bfloat16, the flow and its log-determinants "
             "in float32, 1.55x the float32 steps/s on the 2-core EPYC it was set on; the "
             "decay's 6,800 steps are what 20 minutes gave there (a figure of that "
             "machine); on CPUs without them bfloat16 is emulated and about 4x slower "
             "than float32"),
}

NAMES = tuple(PRESETS)


def resolve(name, given):
  """The flag values of preset `name` overridden by `given` (the flags set explicitly).

  Raises:
    ValueError: one line for an unknown name.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown --config {name!r}; expected one of {', '.join(NAMES)}")
  values = dict(PRESETS[name].flags)
  values.update(given)
  return values


def describe():
  """A Markdown table of the presets (the README's)."""
  rows = ["| --config | model | levels x steps, width | recipe | published bits/dim | source |",
          "|---|---|---|---|---|---|"]
  for name, p in PRESETS.items():
    f = p.flags
    recipe = f"{f.get('optimizer', 'adam')} {f.get('learning_rate', 1e-3):g}"
    if f.get("warmup_steps"):
      recipe += f", warm-up {f['warmup_steps']}"
    if f.get("lr_decay", "constant") != "constant":
      recipe += f", {f['lr_decay']} decay to 0 at step {f['steps']}"
    if f.get("ema"):
      recipe += f", EMA {f['ema']}"
    if f.get("precision", "float32") != "float32":
      recipe += f", {f['precision']}"
    published = f"{p.published_bpd} ({p.dataset})" if p.published_bpd else "-"
    rows.append(f"| `{name}` | {f['model']} | {f.get('num_levels')} x {f.get('num_steps')}, "
                f"{f.get('hidden')} | {recipe}, batch {f.get('batch_size')} | {published} | "
                f"{p.source}; {p.note} |")
  return "\n".join(rows)
