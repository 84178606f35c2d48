"""MNIST, side by side with normflows: bits/dim in equal CPU time, throughput, start-up.

Data: the MNIST test split in ../shared/data/mnist (10,000 images, IDX), split as the
trainer splits it (`tfpflows.data.load_idx`): the first 9,000 images train, the last 1,000
are held out. Both libraries are evaluated on the same 1,000 held-out images with one fixed
uniform dequantization draw (numpy RandomState(1234)), bits/dim = -log p(x) / (784 ln 2)
with x in [0, 256) (each model's log-density on [-0.5, 0.5] plus the 784 log 256 Jacobian).

Phases (each system in its own worker process, pinned to 2 threads; only one computes at a
time):

1. Start-up and throughput at Glow's MNIST shape (28x28x1, L=2 levels, K=8 steps per level,
   hidden 256, batch 64, float32 on both sides). Start-up: seconds from the start of model
   building to the end of the first training step (ours: `build_flow`, ActNorm
   initialisation, `compile`, the first `fit` step, which traces; normflows: construction
   and the first step, which initialises ActNorm), imports excluded and printed apart.
   Throughput: alternating timed rounds of training steps (ours: the compiled Keras train
   function on a persistent iterator; normflows: its plain step), one untimed step first.
   `ratio startup_vs_normflows_glow` = normflows' start-up / ours;
   `ratio mnist_glow_step_vs_normflows` = our steps/s / normflows'.
2. Equal-time training. normflows: the multi-scale Glow of phase 1 (built as in its
   examples/glow.ipynb, unconditional base), Adamax 1e-3, batch 64, uniform dequantization
   with fresh noise per batch, epochs reshuffled. Ours: the trainer's `--config`
   (`--ours-config`; by default `glow_mnist_cpu_bf16` where the CPU has native bfloat16,
   else `glow_mnist_cpu`) built by `trainers.train.build_compiled_model`
   with the trainer's data stream (`tfpflows.data.train_batches`, seed 0) and ActNorm
   initialised on its first batch, as `python -m trainers.train --config=...` does. The two
   train in alternating turns of `--slice` seconds until each has trained `--minutes`;
   both are evaluated on the held-out set every `--eval-minutes` of their own training time
   (evaluation time is not training time). Ours is evaluated with its EMA weights when the
   recipe has one. `ratio mnist_bpd_vs_normflows` = normflows' final bits/dim / ours.
   PNGs: the learning curves and a grid of our samples (T = 0.7, 1.0) in `--plot`.

  python bench/mnist_bench.py                       # the full run (about 50 minutes)
  python bench/mnist_bench.py --minutes 2 --rounds 1 --throughput-seconds 5   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_workers import (REPO, THREADS, WorkerProcess, cpu_probe,  # noqa: E402
                                 emit, foreign_cores, serve, worker_failed)

DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist",
                            "t10k-images-idx3-ubyte.gz")
SHAPE = (28, 28, 1)
D = 784
BATCH = 64
GLOW = dict(num_levels=2, num_steps=8, hidden=256)
NF_LR = 1e-3
EVAL_BATCH = 250


def bpd_from_log_prob(mean_log_prob: float) -> float:
  return -mean_log_prob / (D * math.log(2.0))


# --------------------------------------------------------------------------- ours
def setup_tf():
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(THREADS)
  tf.config.threading.set_inter_op_parallelism_threads(THREADS)
  return tf


class _Timed:
  """Training for a given number of seconds of whole steps (`self._step()` each)."""

  def train(self, seconds):
    t0, steps = time.perf_counter(), 0
    while True:
      loss = self._step()
      steps += 1
      if time.perf_counter() - t0 >= seconds:
        break
    self.steps += steps
    self.loss = loss
    return dict(steps=steps, seconds=time.perf_counter() - t0, loss=loss)


class Ours(_Timed):
  """A tfpflows model: the Glow shape (phase 1) or a trainer --config (phase 2)."""

  def __init__(self, args, preset, precision="float32"):
    t_import = time.perf_counter()
    tf = setup_tf()
    import keras
    import numpy as np
    from tfpflows import data as flow_data
    from tfpflows import recipes
    from trainers import configs, train
    self.import_s = time.perf_counter() - t_import
    self.tf, self.np, self.recipes = tf, np, recipes
    train_u8 = np.load(os.path.join(args.work, "train.npy"))
    self.heldout = np.load(os.path.join(args.work, "heldout.npy"))
    if preset:
      values = configs.resolve(preset, dict(dataset="mnist", batch_size=BATCH))
    else:
      values = dict(model="glow", **GLOW, batch_size=BATCH, optimizer="adam",
                    precision=precision)
    self.config = train.Config(**dict(values, model_dir=None, export_dir=None,
                                      dataset="mnist", config=preset))
    stream = flow_data.train_batches(tf.data.Dataset.from_tensor_slices(train_u8),
                                     batch_size=BATCH, seed=0, num_examples=len(train_u8),
                                     n_bits=self.config.n_bits)
    self.iterator = iter(stream)
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    self.model = train.build_compiled_model(self.config, SHAPE)
    self.model.initialize(next(self.iterator))
    if hasattr(self.model, "_build_optimizer"):
      self.model._build_optimizer()     # as FlowModel.fit does: one trace, not two
    self.model.make_train_function()
    self.loss = self._step()
    self.startup_s = time.perf_counter() - t0
    self.steps = 1
    self.params = int(sum(math.prod(w.shape) for w in self.model.trainable_weights))
    self.describe = {k: getattr(self.config, k) for k in (
        "model", "num_levels", "num_steps", "hidden", "optimizer", "learning_rate",
        "warmup_steps", "lr_decay", "clip_norm", "ema", "precision", "config")}
    self._log_prob = tf.function(self.model.log_prob)

  def _step(self):
    logs = self.model.train_function(self.iterator)
    logs = logs.get_value() if hasattr(logs, "get_value") else logs
    return float(logs["loss"])

  def evaluate(self):
    with self.recipes.ema_weights(self.model):
      total = 0.0
      for i in range(0, len(self.heldout), EVAL_BATCH):
        total += float(self.tf.reduce_sum(self._log_prob(self.heldout[i:i + EVAL_BATCH])))
    return dict(bpd=bpd_from_log_prob(total / len(self.heldout)), steps=self.steps)

  def samples(self, path):
    from tfpflows import plotting
    with self.recipes.ema_weights(self.model):
      grid = {f"T={t}": self.model.sample(36, temperature=t, seed=0) for t in (0.7, 1.0)}
    plotting.save_image_grid(grid, path, title=f"tfpflows {self.config.config or 'glow'} "
                             f"on MNIST, {self.steps} steps")
    return dict(path=path)


# --------------------------------------------------------------------------- normflows
def build_normflows_glow(num_levels, num_steps, hidden):
  """Multi-scale Glow as in normflows' examples/glow.ipynb (unconditional base)."""
  import normflows as nf
  L, K = num_levels, num_steps
  C, H, W = SHAPE[2], SHAPE[0], SHAPE[1]
  q0, merges, flows = [], [], []
  for i in range(L):
    flows_ = [nf.flows.GlowBlock(C * 2 ** (L + 1 - i), hidden, split_mode="channel",
                                 scale=True) for _ in range(K)]
    flows_ += [nf.flows.Squeeze()]
    flows += [flows_]
    if i > 0:
      merges += [nf.flows.Merge()]
      latent = (C * 2 ** (L - i), H // 2 ** (L - i), W // 2 ** (L - i))
    else:
      latent = (C * 2 ** (L + 1), H // 2 ** L, W // 2 ** L)
    q0 += [nf.distributions.GlowBase(latent)]
  return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


class Normflows(_Timed):
  def __init__(self, args):
    t_import = time.perf_counter()
    import numpy as np
    import torch
    import normflows  # noqa: F401
    self.import_s = time.perf_counter() - t_import
    torch.set_num_threads(THREADS)
    try:
      torch.set_num_interop_threads(THREADS)
    except RuntimeError:
      pass
    self.torch, self.np = torch, np
    train_u8 = np.load(os.path.join(args.work, "train.npy"))
    self.train_x = torch.from_numpy(np.transpose(train_u8, (0, 3, 1, 2)).astype(np.float32))
    held = np.load(os.path.join(args.work, "heldout.npy"))
    self.heldout = torch.from_numpy(np.transpose(held, (0, 3, 1, 2)).copy())
    self.gen = torch.Generator().manual_seed(0)
    self.order, self.pos = torch.randperm(len(self.train_x), generator=self.gen), 0
    t0 = time.perf_counter()
    torch.manual_seed(0)
    self.model = build_normflows_glow(**GLOW)
    self.model.train()
    self.opt = torch.optim.Adamax(self.model.parameters(), lr=NF_LR)
    self.log256 = D * math.log(256.0)
    self.loss = self._step()      # the first batch initialises ActNorm
    self.startup_s = time.perf_counter() - t0
    self.steps = 1
    self.params = int(sum(p.numel() for p in self.model.parameters() if p.requires_grad))
    self.describe = dict(GLOW, optimizer="adamax", learning_rate=NF_LR,
                         torch=torch.__version__)

  def _batch(self):
    if self.pos + BATCH > len(self.order):
      self.order = self.torch.randperm(len(self.train_x), generator=self.gen)
      self.pos = 0
    idx = self.order[self.pos:self.pos + BATCH]
    self.pos += BATCH
    x = self.train_x[idx]
    x = x + self.torch.rand(x.shape, generator=self.gen)
    return x / 256.0 - 0.5

  def _step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.model.forward_kld(self._batch())
    loss.backward()
    self.opt.step()
    return float(loss.detach()) + self.log256

  def evaluate(self):
    torch = self.torch
    total = 0.0
    with torch.no_grad():
      for i in range(0, len(self.heldout), EVAL_BATCH):
        x = self.heldout[i:i + EVAL_BATCH] / 256.0 - 0.5
        total += float(self.model.log_prob(x, None).sum()) - self.log256 * len(x)
    return dict(bpd=bpd_from_log_prob(total / len(self.heldout)), steps=self.steps)


def worker_main(args) -> int:
  t0 = time.perf_counter()
  try:
    if args.worker == "ours_glow":
      system = Ours(args, None)
    elif args.worker == "ours_glow_bf16":
      system = Ours(args, None, precision="mixed_bfloat16")
    elif args.worker == "ours_train":
      system = Ours(args, args.ours_config)
    elif args.worker in ("nf_glow", "nf_train"):
      system = Normflows(args)
    else:
      raise ValueError(args.worker)
  except Exception as e:  # pylint: disable=broad-except
    return worker_failed(e)
  emit(dict(ready=True, params=system.params, config=system.describe,
            startup_s=system.startup_s, import_s=system.import_s,
            setup_s=time.perf_counter() - t0, loss=system.loss))
  commands = dict(train=lambda s: system.train(float(s)), evaluate=system.evaluate)
  if hasattr(system, "samples"):
    commands["samples"] = system.samples
  return serve(commands)


# --------------------------------------------------------------------------- parent
def prepare(args):
  """train.npy (uint8, the trainer's 9,000) and heldout.npy (float32, one fixed draw)."""
  import numpy as np
  from tfpflows.data import load_idx
  train_u8, held_u8 = load_idx(args.dataset)
  rng = np.random.RandomState(1234)
  held = held_u8.astype(np.float32) + rng.uniform(size=held_u8.shape).astype(np.float32)
  np.save(os.path.join(args.work, "train.npy"), train_u8)
  np.save(os.path.join(args.work, "heldout.npy"), held)
  print(f"data: {args.dataset}: {len(train_u8)} train, {len(held_u8)} held out "
        f"(one fixed dequantization draw)", flush=True)


def start(name, args):
  w = WorkerProcess(__file__, name, [f"--work={args.work}",
                                     f"--ours-config={args.ours_config}"],
                    os.path.join(args.work, f"{name}.log"))
  msg = w.read()
  if not msg.get("ready"):
    w.close()
    raise RuntimeError(f"worker {name} failed: {msg.get('error')} (log {w.name})")
  print(f"setup {name}: params={msg['params']} startup_s={msg['startup_s']:.2f} "
        f"import_s={msg['import_s']:.2f} loss={msg['loss']:.1f} "
        f"config={json.dumps(msg['config'], sort_keys=True)}", flush=True)
  return w, msg


def phase_throughput(args, ratios):
  print(f"## start-up and throughput: Glow 28x28x1 L={GLOW['num_levels']} "
        f"K={GLOW['num_steps']} hidden {GLOW['hidden']} batch {BATCH}, float32", flush=True)
  workers, startup = {}, {}
  names = ("ours_glow", "nf_glow") + (("ours_glow_bf16",) if args.bf16_info else ())
  for name in names:
    workers[name], msg = start(name, args)
    startup[name] = msg["startup_s"]
  rates = {name: [] for name in workers}
  try:
    for r in range(args.rounds):
      order = list(workers) if r % 2 == 0 else list(reversed(workers))
      for name in order:
        w = workers[name]
        for attempt in range(3):                   # redone when other jobs took > 0.3 cores
          w.request("train 0")                     # one untimed step
          probe = cpu_probe(w.proc.pid)
          res = w.request(f"train {args.throughput_seconds}")
          other = foreign_cores(probe, w.proc.pid)
          if other <= 0.3:
            break
          print(f"round {r + 1} {name:9s} steps/s={res['steps'] / res['seconds']:.3f} REDONE: "
                f"other jobs used {other:.2f} cores", flush=True)
        rates[name].append(res["steps"] / res["seconds"])
        print(f"round {r + 1} {name:9s} steps/s={rates[name][-1]:.3f} steps={res['steps']} "
              f"loss={res['loss']:.1f} other_cores={other:.2f}", flush=True)
  finally:
    for w in workers.values():
      w.close()
  med = {k: statistics.median(v) for k, v in rates.items()}
  print(f"median steps/s: ours {med['ours_glow']:.3f}, normflows {med['nf_glow']:.3f}")
  if "ours_glow_bf16" in med:
    print(f"info ours with mixed_bfloat16 conditioners (not in the ratio, which is float32 "
          f"on both sides): median steps/s {med['ours_glow_bf16']:.3f}, "
          f"{med['ours_glow_bf16'] / med['nf_glow']:.3f}x normflows' float32")
  print(f"start-up s: ours {startup['ours_glow']:.2f}, normflows {startup['nf_glow']:.2f}")
  ratios["mnist_glow_step_vs_normflows"] = med["ours_glow"] / med["nf_glow"]
  ratios["startup_vs_normflows_glow"] = startup["nf_glow"] / startup["ours_glow"]


def phase_training(args, ratios):
  print(f"## equal-time training: {args.minutes} min each, turns of {args.slice} s, "
        f"held-out bits/dim every {args.eval_minutes} min", flush=True)
  workers = {}
  for name in ("ours_train", "nf_train"):
    workers[name], _ = start(name, args)
  trained = {name: 0.0 for name in workers}
  curves = {name: [] for name in workers}
  next_eval = {name: 0.0 for name in workers}
  budget = args.minutes * 60.0
  try:
    while any(t < budget for t in trained.values()):
      for name, w in workers.items():
        if trained[name] >= budget:
          continue
        if trained[name] >= next_eval[name]:
          e = w.request("evaluate")
          curves[name].append((trained[name] / 60.0, e["bpd"], e["steps"]))
          print(f"eval {name:10s} at {trained[name] / 60:6.2f} min ({e['steps']:6d} steps): "
                f"{e['bpd']:.4f} bits/dim", flush=True)
          next_eval[name] += args.eval_minutes * 60.0
        seconds = min(args.slice, budget - trained[name], next_eval[name] - trained[name])
        probe = cpu_probe(w.proc.pid)
        res = w.request(f"train {max(seconds, 0.01)}")
        trained[name] += res["seconds"]
        other = foreign_cores(probe, w.proc.pid)
        if other > 0.3:
          print(f"  note: {name} turn had other jobs using {other:.2f} cores", flush=True)
    for name, w in workers.items():
      e = w.request("evaluate")
      curves[name].append((trained[name] / 60.0, e["bpd"], e["steps"]))
      print(f"final {name:10s} at {trained[name] / 60:6.2f} min ({e['steps']:6d} steps): "
            f"{e['bpd']:.4f} bits/dim", flush=True)
    if args.plot:
      os.makedirs(args.plot, exist_ok=True)
      workers["ours_train"].request(
          f"samples {os.path.join(os.path.abspath(args.plot), 'mnist_samples.png')}")
  finally:
    for w in workers.values():
      w.close()
  ours, nf = curves["ours_train"][-1][1], curves["nf_train"][-1][1]
  ratios["mnist_bpd_vs_normflows"] = nf / ours
  if args.plot:
    plot_curves(curves, os.path.join(args.plot, "mnist_curves.png"), args)
  with open(os.path.join(args.work, "curves.json"), "w") as f:
    json.dump(curves, f)
  return curves


def plot_curves(curves, path, args):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  labels = {"ours_train": f"tfpflows --config={args.ours_config}",
            "nf_train": "normflows Glow (L=2, K=8, 256)"}
  for name, points in curves.items():
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=labels[name])
  ax.set_xlabel("training minutes (2 cores)")
  ax.set_ylabel("held-out bits/dim (1,000 MNIST images)")
  ax.set_ylim(top=min(6.0, max(p[1] for v in curves.values() for p in v) + 0.1))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f"plot: {path}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  p.add_argument("--work", default=None, help=argparse.SUPPRESS)
  p.add_argument("--dataset", default=DEFAULT_DATA)
  p.add_argument("--ours-config", default=None,
                 help="our trainer --config (default: glow_mnist_cpu_bf16 on a CPU with "
                      "native bfloat16, else glow_mnist_cpu)")
  p.add_argument("--minutes", type=float, default=20.0)
  p.add_argument("--slice", type=float, default=60.0)
  p.add_argument("--eval-minutes", type=float, default=2.5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--throughput-seconds", type=float, default=20.0)
  p.add_argument("--skip-throughput", action="store_true")
  p.add_argument("--bf16-info", action="store_true",
                 help="also time ours with mixed_bfloat16 conditioners (printed as info)")
  p.add_argument("--skip-training", action="store_true")
  p.add_argument("--plot", default=None, help="folder for the PNGs")
  args = p.parse_args(argv)
  if args.worker:
    return worker_main(args)
  if args.ours_config is None:
    from tfpflows.recipes import cpu_has_bfloat16
    native = cpu_has_bfloat16()
    args.ours_config = "glow_mnist_cpu_bf16" if native else "glow_mnist_cpu"
    print(f"--ours-config {args.ours_config} (native bfloat16 on this CPU: {native})",
          flush=True)
  if not os.path.exists(args.dataset):
    print(f"error: --dataset {args.dataset!r} does not exist (the MNIST test split IDX "
          "file)", file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  ratios = {}
  with tempfile.TemporaryDirectory(prefix="mnist_bench_") as work:
    args.work = work
    prepare(args)
    if not args.skip_throughput:
      phase_throughput(args, ratios)
    if not args.skip_training:
      phase_training(args, ratios)
  print(f"## results ({time.perf_counter() - t0:.0f} s in all)")
  targets = dict(mnist_bpd_vs_normflows=1.25, mnist_glow_step_vs_normflows=1.3,
                 startup_vs_normflows_glow=0.7)
  for name, value in ratios.items():
    met = "met" if value >= targets[name] else "NOT met"
    print(f"ratio {name} {value:.3f}    # target >= {targets[name]}: {met}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
