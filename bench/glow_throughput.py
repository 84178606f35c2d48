"""Training throughput of multi-scale Glow on 32x32x3 images: tfpflows vs TFP vs normflows.

What is measured
----------------
Images per second of complete training steps (forward log-prob, backward, optimizer
update) for a multi-scale Glow with L=3 levels, K=4 steps per level, 400 hidden channels,
batch 32, on a fixed batch of random uniformly dequantized 8-bit-like pixels
(integers in [0, 256) plus U[0, 1) noise). Only speed matters; the loss of every
system is printed as a sanity check (bits/dim should fall towards 8 on this noise data).

Systems
-------
ours        ``tfpflows.models.build_flow("glow", event_shape=(32, 32, 3), num_levels=3,
            num_steps=4, hidden=400)``, ``model.initialize(x)``,
            ``model.compile(optimizer=keras.optimizers.Adam(1e-3))`` (Keras 3 default
            ``jit_compile="auto"``, which is XLA-off on a CPU-only machine), measured two ways:
              fit      ``model.fit(ds, steps_per_epoch=N, verbose=0)`` on
                       ``tf.data.Dataset.from_tensors(x).repeat()`` -- what users run;
              trainfn  the compiled ``model.train_function(iterator)`` called in a loop
                       (no callbacks / epoch set-up).
ours_xla    the same with ``model.compile(..., jit_compile=True)`` (XLA).
ours_bf16   the same (fit) with ``keras.mixed_precision.set_global_policy("mixed_bfloat16")``
            before ``build_flow``: conditioner networks compute in bfloat16, the flow's
            arithmetic and all weights stay float32. Not like-for-like with TFP's float32,
            so it is printed as information, never in a ratio line.
tfp         ``tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0, 1), z_shape),
            tfb.Glow(output_shape=(32, 32, 3), num_glow_blocks=3, num_steps_per_block=4,
            coupling_bijector_fn=tfb.GlowDefaultNetwork,
            exit_bijector_fn=tfb.GlowDefaultExitNetwork))`` (400 hidden is the default),
            trained by a ``tf.function`` step: ``tape.gradient(loss, dist.trainable_variables)``
            and a Keras 3 ``keras.optimizers.Adam(1e-3)``. Pixels are scaled to
            [-0.5, 0.5] (x / 256 - 0.5) and the NLL gets the ``D * log(256)`` Jacobian term so
            it is in the same pixel units as ours.
tfp_xla     (only with ``--tfp-xla``) the same step under ``tf.function(jit_compile=True)``.
tfp_bf16    the same step with the same split as ours_bf16: TFP's ``GlowDefaultNetwork`` and
            ``GlowDefaultExitNetwork`` built under tf_keras' ``mixed_bfloat16`` policy (they
            compute in bfloat16, keep float32 weights) plus a float32 output layer, so TFP's
            flow arithmetic stays float32. With ours_bf16 it gives a like-for-like bfloat16
            ratio, printed as information.
normflows   normflows 1.7.3 (PyTorch CPU) multi-scale Glow built as in normflows'
            ``examples/glow.ipynb``: per level K ``nf.flows.GlowBlock`` (affine coupling with
            sigmoid scale, LU 1x1 conv, ActNorm) + ``nf.flows.Squeeze``, ``nf.flows.Merge``
            between levels, ``nf.MultiscaleFlow``; unconditional ``nf.distributions.GlowBase``
            base per level (ours is unconditional; the notebook's ClassCondDiagGaussian needs
            labels). Hidden channels are chosen (multiple of 8) so the trainable parameter
            count is as close as possible to ours (to TFP's when ours is unavailable). Same
            x / 256 - 0.5 scaling, loss ``model.forward_kld(x)``, ``torch.optim.Adam(1e-3)``.

Method and fairness
-------------------
Every system runs in its own worker process (this same script with ``--worker=NAME``),
so TensorFlow and PyTorch never share a process (their thread pools would fight) and
the two TF systems do not share graphs, caches or allocator state. Every worker is pinned
to 2 threads: ``OMP_NUM_THREADS=2``, TF intra-op and inter-op pools of 2,
``torch.set_num_threads(2)``. Workers are started and warmed up one after another (tracing,
XLA compilation and data-dependent ActNorm initialisation are excluded from timing), then
idle while the parent drives alternating timed rounds (ours, ours_xla, tfp, normflows,
repeated ``--rounds`` times, about ``--seconds`` each), so machine-load drift hits every
system alike. Only one worker computes at any time (idle workers were checked to use no
CPU); each timed round starts with one untimed step, and ours' fit/trainfn order alternates
between rounds. The reported figure per system is the median over rounds. The
CPU used by other jobs during each round (machine busy time from /proc/stat minus the timed
worker's own) is printed as ``other_cores``, and a round where it exceeds ``--max-other``
(0.5 cores) is redone, up to ``--retries`` times: on a machine shared with other jobs,
PyTorch's OpenMP threads lose far more than TF's pools when cores are oversubscribed, so
contaminated rounds would skew the normflows ratio most.

The headline for "ours" is the best of the configurations a user gets through documented
settings (``model.fit`` with default compile, or ``model.fit`` with ``jit_compile=True``),
timed over fit's training loop: from ``on_train_begin`` to ``on_train_end`` of a callback
that overrides no batch hook (so Keras keeps its asynchronous dispatch and the loop is the
one users run). The whole ``fit`` call is printed too (``fit_wall``): with TF 2.21 and a
``tf.data`` dataset it can end with a stall of several seconds, as the dataset iterator's
teardown waits for tf.data's autotuning thread, whose sleep starts at 10 ms and doubles
(calls end near 10.24 s, 20.48 s, 40.96 s...; ``options.autotune.enabled = False`` removes
it). That is a per-``fit``-call (or per-epoch for finite datasets) cost of TF, not of the
model, and would swamp ~12 s rounds, so it is reported but not in the headline.
The compiled train-function figures are printed for information.

Output ends with exactly::

    ratio glow_vs_tfp_glow VALUE         # ours img/s / TFP Glow img/s (target >= 2.0)
    ratio glow_vs_normflows_glow VALUE   # ours img/s / normflows img/s (target >= 1.0)

Usage::

    python bench/glow_throughput.py               # full run (~9 min on 2 cores)
    python bench/glow_throughput.py --quick       # smoke run (short rounds)
    python bench/glow_throughput.py --rounds 5 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

from bench_workers import (THREADS, WorkerProcess, cpu_probe, emit, fit_marker, foreign_cores,
                           serve, worker_failed)

EVENT_SHAPE = (32, 32, 3)
NUM_LEVELS = 3
NUM_STEPS = 4
HIDDEN = 400
BATCH = 32
LR = 1e-3
if os.environ.get("GLOW_BENCH_SHAPE"):   # "H,W,C;L;K;hidden;batch", e.g. MNIST's
    # "28,28,1;2;8;256;64" (bench/profile_glow.py at mnist_bench.py's shape); inherited
    # by the worker processes.
    _shape, _l, _k, _h, _b = os.environ["GLOW_BENCH_SHAPE"].split(";")
    EVENT_SHAPE = tuple(int(v) for v in _shape.split(","))
    NUM_LEVELS, NUM_STEPS, HIDDEN, BATCH = int(_l), int(_k), int(_h), int(_b)
D = EVENT_SHAPE[0] * EVENT_SHAPE[1] * EVENT_SHAPE[2]

# Worker name -> measurement modes it supports (in the order they are timed each round).
WORKERS = {
    "ours": ("fit", "trainfn"),
    "ours_xla": ("fit",),
    "ours_bf16": ("fit",),
    "tfp": ("step",),
    "tfp_xla": ("step",),
    "tfp_bf16": ("step",),
    "normflows": ("step",),
}


# --------------------------------------------------------------------------- helpers
def make_pixels(seed: int = 0):
    """Random dequantized 8-bit-like pixels in [0, 256), float32 [B, 32, 32, 3] (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(BATCH,) + EVENT_SHAPE).astype("float32")
    x += rng.random(size=x.shape, dtype="float32")
    return np.minimum(x, np.float32(255.999))


def bpd(nll_pixels: float) -> float:
    return float(nll_pixels) / (D * math.log(2.0))


def setup_tf_threads():
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    return tf


# --------------------------------------------------------------------------- systems
class OursSystem:
    """tfpflows Glow trained by Keras 3 fit / its compiled train function."""

    def __init__(self, jit: bool, warmup_steps: int, policy: str = "float32"):
        tf = setup_tf_threads()
        import keras
        from tfpflows.models import build_flow

        self.tf = tf
        x = tf.constant(make_pixels())
        self.x = x
        keras.mixed_precision.set_global_policy(policy)   # conditioners only; flow stays fp32
        model = build_flow("glow", event_shape=EVENT_SHAPE, num_levels=NUM_LEVELS,
                           num_steps=NUM_STEPS, hidden=HIDDEN)
        model.initialize(x)
        kwargs = {"jit_compile": True} if jit else {}
        model.compile(optimizer=keras.optimizers.Adam(LR), **kwargs)
        self.model = model
        self.ds = tf.data.Dataset.from_tensors(x).repeat()
        # Warm-up: traces / compiles the train function (shared by fit and trainfn).
        t0 = time.perf_counter()
        model.fit(self.ds, steps_per_epoch=1, epochs=1, verbose=0)
        self.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hist = model.fit(self.ds, steps_per_epoch=warmup_steps, epochs=1, verbose=0)
        dt = time.perf_counter() - t0
        self.rate = warmup_steps * BATCH / dt  # img/s estimate, sizes fit rounds
        self.last_loss = float(hist.history["loss"][-1])
        self.iterator = iter(self.ds)
        self._sync(model.train_function(self.iterator))  # warm the direct path too
        self.params = int(sum(int(math.prod(w.shape)) for w in model.trainable_weights))
        self.config = {"jit_compile": model.jit_compile, "policy": policy,
                       "steps_per_execution": getattr(model, "steps_per_execution", 1),
                       "keras": keras.__version__, "tf": tf.__version__}

    def _sync(self, out):
        # train_function returns an Optional of logs; reading a value forces completion.
        logs = out.get_value() if hasattr(out, "get_value") else out
        loss = logs["loss"] if isinstance(logs, dict) and "loss" in logs else None
        if loss is not None:
            self.last_loss = float(loss)

    def prime(self):
        self._sync(self.model.train_function(self.iterator))

    def run(self, mode: str, seconds: float) -> dict:
        if mode == "fit":
            steps = max(2, int(round(seconds * self.rate / BATCH)))
            marks = {}
            t0 = time.perf_counter()
            hist = self.model.fit(self.ds, steps_per_epoch=steps, epochs=1, verbose=0,
                                  callbacks=[fit_marker(marks)])
            wall = time.perf_counter() - t0
            self.last_loss = float(hist.history["loss"][-1])
            # Headline: the training loop itself (on_train_begin -> on_train_end). The
            # whole call (wall) adds fit's set-up and tear-down, where TF 2.21 can block on
            # tf.data's autotuning thread (see module docstring): printed as fit_wall.
            dt = marks["end"] - marks["begin"]
            img_s = steps * BATCH / dt
            self.rate = img_s
            return {"steps": steps, "seconds": dt, "img_s": img_s, "loss": self.last_loss,
                    "wall_s": wall, "wall_img_s": steps * BATCH / wall}
        else:
            steps = 0
            t0 = time.perf_counter()
            out = None
            while True:
                out = self.model.train_function(self.iterator)
                steps += 1
                if time.perf_counter() - t0 >= seconds:
                    break
            self._sync(out)
            dt = time.perf_counter() - t0
        img_s = steps * BATCH / dt
        self.rate = img_s
        return {"steps": steps, "seconds": dt, "img_s": img_s, "loss": self.last_loss}


class TFPSystem:
    """tfb.Glow with default networks, tf.function step, Keras 3 Adam."""

    def __init__(self, jit: bool, warmup_steps: int, policy: str = "float32"):
        tf = setup_tf_threads()
        import keras
        import tensorflow_probability as tfp

        tfb, tfd = tfp.bijectors, tfp.distributions
        self.tf = tf
        coupling_fn, exit_fn = tfb.GlowDefaultNetwork, tfb.GlowDefaultExitNetwork
        if policy != "float32":
            coupling_fn, exit_fn = _with_policy(coupling_fn, policy), _with_policy(exit_fn, policy)
        glow = tfb.Glow(output_shape=EVENT_SHAPE, num_glow_blocks=NUM_LEVELS,
                        num_steps_per_block=NUM_STEPS,
                        coupling_bijector_fn=coupling_fn,  # num_hidden=400
                        exit_bijector_fn=exit_fn)
        z_shape = glow.inverse_event_shape(EVENT_SHAPE)
        base = tfd.Sample(tfd.Normal(0.0, 1.0), z_shape)
        dist = tfd.TransformedDistribution(base, glow)
        self.dist = dist
        x = tf.constant(make_pixels())
        self.x = x
        log256 = float(D * math.log(256.0))

        def loss_fn(xb):
            # Pixels [0, 256) -> [-0.5, 0.5]; the scaling's log|det| is -D log 256.
            return -tf.reduce_mean(dist.log_prob(xb / 256.0 - 0.5)) + log256

        # First call runs TFP's data-dependent ActNorm init (tf.cond on a variable) and
        # creates the tf_keras network variables.
        loss_fn(x)
        variables = list(dist.trainable_variables)
        opt = keras.optimizers.Adam(LR)
        opt.build(variables)
        self.variables, self.opt = variables, opt

        def step(xb):
            with tf.GradientTape() as tape:
                loss = loss_fn(xb)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            return loss

        self.step = tf.function(step, jit_compile=True if jit else None)
        t0 = time.perf_counter()
        self.last_loss = float(self.step(x))
        self.compile_s = time.perf_counter() - t0
        for _ in range(warmup_steps):
            self.last_loss = float(self.step(x))
        self.params = int(sum(int(math.prod(v.shape)) for v in variables))
        self.config = {"jit_compile": bool(jit), "tfp": tfp.__version__,
                       "num_variables": len(variables), "policy": policy}

    def prime(self):
        self.last_loss = float(self.step(self.x))

    def run(self, mode: str, seconds: float) -> dict:
        steps = 0
        t0 = time.perf_counter()
        while True:
            loss = self.step(self.x)
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        self.last_loss = float(loss)
        dt = time.perf_counter() - t0
        return {"steps": steps, "seconds": dt, "img_s": steps * BATCH / dt,
                "loss": self.last_loss}


def _with_policy(make_network, policy: str):
    """TFP network factory whose layers compute under tf_keras `policy`, output float32."""
    import tf_keras

    def make(*args, **kwargs):
        previous = tf_keras.mixed_precision.global_policy()
        tf_keras.mixed_precision.set_global_policy(policy)
        try:
            net = make_network(*args, **kwargs)
        finally:
            tf_keras.mixed_precision.set_global_policy(previous)
        net.add(tf_keras.layers.Activation("linear", dtype="float32"))
        return net

    return make


def build_normflows_glow(hidden: int):
    """Multi-scale Glow as in normflows' examples/glow.ipynb (unconditional base)."""
    import normflows as nf

    L, K = NUM_LEVELS, NUM_STEPS
    input_shape = (EVENT_SHAPE[2], EVENT_SHAPE[0], EVENT_SHAPE[1])  # C, H, W
    channels = input_shape[0]
    q0, merges, flows = [], [], []
    for i in range(L):
        flows_ = []
        for _ in range(K):
            flows_ += [nf.flows.GlowBlock(channels * 2 ** (L + 1 - i), hidden,
                                          split_mode="channel", scale=True)]
        flows_ += [nf.flows.Squeeze()]
        flows += [flows_]
        if i > 0:
            merges += [nf.flows.Merge()]
            latent_shape = (input_shape[0] * 2 ** (L - i), input_shape[1] // 2 ** (L - i),
                            input_shape[2] // 2 ** (L - i))
        else:
            latent_shape = (input_shape[0] * 2 ** (L + 1), input_shape[1] // 2 ** L,
                            input_shape[2] // 2 ** L)
        q0 += [nf.distributions.GlowBase(latent_shape)]
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def count_torch_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def normflows_hidden_for(target_params: int) -> int:
    """Hidden width (multiple of 8) whose parameter count is closest to target_params."""
    # The count is quadratic in the hidden width: fit it exactly from three widths.
    hs = (64, 128, 256)
    cs = [count_torch_params(build_normflows_glow(h)) for h in hs]
    import numpy as np

    a, b, c = np.polyfit(np.array(hs, float), np.array(cs, float), 2)
    disc = b * b - 4 * a * (c - target_params)
    h0 = (-b + math.sqrt(max(disc, 0.0))) / (2 * a)
    cands = {max(8, int(8 * math.floor(h0 / 8))), max(8, int(8 * math.ceil(h0 / 8)))}
    return min(cands, key=lambda h: abs(a * h * h + b * h + c - target_params))


class NormflowsSystem:
    def __init__(self, hidden: int, warmup_steps: int):
        import numpy as np
        import torch

        torch.set_num_threads(THREADS)
        try:
            torch.set_num_interop_threads(THREADS)
        except RuntimeError:
            pass
        torch.manual_seed(0)
        self.torch = torch
        model = build_normflows_glow(hidden)
        model.train()
        x = torch.from_numpy(np.transpose(make_pixels(), (0, 3, 1, 2)).copy())
        self.x = x / 256.0 - 0.5
        self.log256 = float(D * math.log(256.0))
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=LR)
        t0 = time.perf_counter()
        self.last_loss = self._step()  # first batch initialises ActNorm
        self.compile_s = time.perf_counter() - t0
        for _ in range(warmup_steps):
            self.last_loss = self._step()
        self.params = count_torch_params(model)
        self.config = {"hidden": hidden, "torch": torch.__version__,
                       "threads": torch.get_num_threads(),
                       "interop_threads": torch.get_num_interop_threads()}

    def _step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.forward_kld(self.x)
        loss.backward()
        self.opt.step()
        return float(loss.detach()) + self.log256

    def prime(self):
        self.last_loss = self._step()

    def run(self, mode: str, seconds: float) -> dict:
        steps = 0
        t0 = time.perf_counter()
        while True:
            loss = self._step()
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        dt = time.perf_counter() - t0
        self.last_loss = loss
        return {"steps": steps, "seconds": dt, "img_s": steps * BATCH / dt, "loss": loss}


def worker_main(args) -> int:
    name = args.worker
    t0 = time.perf_counter()
    try:
        if name in ("ours", "ours_xla", "ours_bf16"):
            system = OursSystem(jit=(name == "ours_xla"), warmup_steps=args.warmup_steps,
                                policy="mixed_bfloat16" if name == "ours_bf16" else "float32")
        elif name in ("tfp", "tfp_xla", "tfp_bf16"):
            system = TFPSystem(jit=(name == "tfp_xla"), warmup_steps=args.warmup_steps,
                               policy="mixed_bfloat16" if name == "tfp_bf16" else "float32")
        elif name == "normflows":
            hidden = args.nf_hidden
            if hidden is None:
                hidden = normflows_hidden_for(args.match_params) if args.match_params else HIDDEN
            system = NormflowsSystem(hidden, warmup_steps=args.warmup_steps)
        else:
            raise ValueError(f"unknown worker {name!r}")
    except Exception as e:  # reported to the parent, which skips this system
        return worker_failed(e)
    emit({"ready": True, "params": system.params, "config": system.config,
          "first_step_s": system.compile_s, "setup_s": time.perf_counter() - t0,
          "loss": system.last_loss})

    def run(mode, seconds):
        system.prime()  # one untimed step: the process was idle while others ran
        res = system.run(mode, float(seconds))
        res["bpd"] = bpd(res["loss"])
        return res

    return serve({"run": run})


# --------------------------------------------------------------------------- parent
class Worker(WorkerProcess):
    """This script as a worker process (`--worker=NAME`)."""

    def __init__(self, name: str, args, extra: list[str]):
        log = os.path.join(args.log_dir, f"glow_{name}.stderr.log") if args.log_dir else ""
        super().__init__(__file__, name, [f"--warmup-steps={args.warmup_steps}"] + extra, log)

    def run(self, mode: str, seconds: float) -> dict:
        return self.request(f"run {mode} {seconds}")


def fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def parent_main(args) -> int:
    t_start = time.perf_counter()
    names = (["ours", "ours_xla", "ours_bf16", "tfp", "tfp_bf16"]
             + (["tfp_xla"] if args.tfp_xla else []) + ["normflows"])
    if args.systems:
        names = [n for n in args.systems.split(",") if n]
    print(f"# glow throughput: event_shape={EVENT_SHAPE} L={NUM_LEVELS} K={NUM_STEPS} "
          f"hidden={HIDDEN} batch={BATCH} Adam(lr={LR}) threads={THREADS} "
          f"rounds={args.rounds} seconds/round={args.seconds} warmup_steps={args.warmup_steps}",
          flush=True)
    print(f"# python={sys.version.split()[0]} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.2f} max_other={args.max_other} "
          f"retries={args.retries}", flush=True)

    workers: dict[str, Worker] = {}
    info: dict[str, dict] = {}
    # Start and warm up one at a time (warm-up excluded from timing).
    for name in names:
        extra = []
        if name == "normflows":
            if args.nf_hidden is not None:
                extra.append(f"--nf-hidden={args.nf_hidden}")
            else:
                target = next((info[n]["params"] for n in ("ours", "ours_xla", "tfp", "tfp_xla")
                               if n in info), None)
                if target:
                    extra.append(f"--match-params={target}")
        w = Worker(name, args, extra)
        msg = w.read()
        if not msg.get("ready"):
            print(f"setup {name}: FAILED ({msg.get('error')})", flush=True)
            w.close()
            continue
        workers[name] = w
        info[name] = msg
        print(f"setup {name}: params={msg['params']} first_step_s={msg['first_step_s']:.1f} "
              f"setup_s={msg['setup_s']:.1f} loss={msg['loss']:.1f} "
              f"config={json.dumps(msg['config'], sort_keys=True)}", flush=True)

    results: dict[str, list[dict]] = {}
    try:
        for r in range(args.rounds):
            for name, w in workers.items():
                modes = list(WORKERS[name])
                if r % 2:  # alternate fit / trainfn order between rounds
                    modes.reverse()
                for mode in modes:
                    if mode == "trainfn" and args.no_trainfn:
                        continue
                    key = f"{name}:{mode}"
                    for attempt in range(args.retries + 1):
                        probe = cpu_probe(w.proc.pid)
                        res = w.run(mode, args.seconds)
                        res["other"] = foreign_cores(probe, w.proc.pid)
                        if "img_s" not in res or not res["other"] > args.max_other:
                            break
                        if attempt < args.retries:
                            print(f"round {r + 1} {key:18s} img/s={res['img_s']:8.2f} "
                                  f"REDONE: other jobs used {res['other']:.2f} cores",
                                  flush=True)
                    if "img_s" not in res:
                        print(f"round {r + 1} {key}: FAILED ({res.get('error')})", flush=True)
                        continue
                    results.setdefault(key, []).append(res)
                    wall = (f" (fit_wall img/s={res['wall_img_s']:.2f} s={res['wall_s']:.2f})"
                            if "wall_s" in res else "")
                    print(f"round {r + 1} {key:18s} img/s={res['img_s']:8.2f} "
                          f"steps={res['steps']:4d} s={res['seconds']:6.2f} "
                          f"bpd={res['bpd']:.3f} other_cores={res['other']:.2f}{wall}",
                          flush=True)
    finally:
        for w in workers.values():
            w.close()

    med = {k: statistics.median(x["img_s"] for x in v) for k, v in results.items()}
    wall_med = {k + "_wall": statistics.median(x["wall_img_s"] for x in v)
                for k, v in results.items() if "wall_img_s" in v[0]}
    print("# summary: median img/s over rounds (per-round figures above)")
    for k, v in med.items():
        per = ", ".join(f"{x['img_s']:.2f}" for x in results[k])
        print(f"median {k:18s} {v:8.2f}   rounds=[{per}]")
    for k, v in wall_med.items():
        per = ", ".join(f"{x['wall_img_s']:.2f}" for x in results[k[:-5]])
        print(f"median {k:18s} {v:8.2f}   rounds=[{per}]   (whole fit call, info)")
    for name, msg in info.items():
        print(f"params {name:10s} {msg['params']}")

    # Headline for ours: best documented user configuration (fit, XLA on or off).
    ours_fit = {k: v for k, v in med.items() if k in ("ours:fit", "ours_xla:fit")}
    ours_key = max(ours_fit, key=ours_fit.get) if ours_fit else None
    ours = ours_fit.get(ours_key, float("nan")) if ours_key else float("nan")
    tfp_ = med.get("tfp:step", float("nan"))
    nf_ = med.get("normflows:step", float("nan"))
    print(f"headline ours = {ours_key} ({fmt(ours)} img/s); tfp = tfp:step ({fmt(tfp_)} img/s);"
          f" normflows = normflows:step ({fmt(nf_)} img/s)")
    if "tfp_xla:step" in med:
        print(f"info ratio ours vs tfp_xla {fmt(ours / med['tfp_xla:step'])}")
    for k in ("ours:trainfn", "ours_xla:trainfn"):
        if k in med:
            print(f"info {k} / tfp:step = {fmt(med[k] / tfp_ if tfp_ else float('nan'))}")
    if "ours_bf16:fit" in med:
        # Not a like-for-like ratio (bfloat16 conditioners vs TFP in float32): info only.
        print(f"info ours_bf16:fit (mixed_bfloat16 conditioners) / tfp:step (float32) = "
              f"{fmt(med['ours_bf16:fit'] / tfp_ if tfp_ else float('nan'))}")
        if med.get("tfp_bf16:step"):
            # Like-for-like in bfloat16: both libraries' networks in bfloat16, flows in float32.
            print(f"info ours_bf16:fit / tfp_bf16:step (both mixed_bfloat16 networks) = "
                  f"{fmt(med['ours_bf16:fit'] / med['tfp_bf16:step'])}")
    print(f"# total wall time {time.perf_counter() - t_start:.0f} s")
    print(f"ratio glow_vs_tfp_glow {fmt(ours / tfp_ if tfp_ else float('nan'))}")
    print(f"ratio glow_vs_normflows_glow {fmt(ours / nf_ if nf_ else float('nan'))}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run (1 round of ~3 s)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per timed round")
    p.add_argument("--warmup-steps", type=int, default=3,
                   help="untimed steps after the first (tracing) step")
    p.add_argument("--systems", default="",
                   help="comma list among " + ",".join(WORKERS) + " (default: all but tfp_xla)")
    p.add_argument("--tfp-xla", action="store_true", help="also time TFP Glow under XLA")
    p.add_argument("--max-other", type=float, default=0.5,
                   help="redo a timed round when other jobs used more than this many cores "
                        "during it (shared machine)")
    p.add_argument("--retries", type=int, default=2,
                   help="at most this many redos per timed round")
    p.add_argument("--no-trainfn", action="store_true",
                   help="skip timing ours' compiled train function")
    p.add_argument("--nf-hidden", type=int, default=None,
                   help="normflows hidden channels (default: match ours' parameter count)")
    p.add_argument("--log-dir", default="", help="write each worker's stderr here")
    # Internal (worker processes).
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--match-params", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.quick:
        args.rounds, args.seconds, args.warmup_steps = 1, 3.0, 1
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
