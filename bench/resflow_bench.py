"""Residual Flows: training memory, step time and equal-time quality, tfpflows vs normflows.

Three parts, each printing its raw figures; the ``ratio NAME VALUE`` lines (higher is
better for us) come together at the end of the output.

1. memory (ours only)
   Peak memory of one training step of an image Residual Flow
   (``build_flow("resflow", (32, 32, 3), num_levels=2, num_steps=2, hidden=64)``, batch 64)
   with every ``ResidualLayer.train_logdet`` set to a deterministic
   ``LogDetEstimator(method="series", n_terms=k, neumann_gradient=...)``; everything else
   (spectral normalisation with the library's power iterations per call, seeds, data) is
   identical. Configurations: Neumann gradient at k = 2, 10, 20; plain backpropagation
   through the series ("naive") at k = 10; and, to check the method, both at k = 10 on
   half the batch (the step's memory should scale with the batch).

   Method. Each configuration runs in a fresh worker process with
   ``TF_CPU_ALLOCATOR_USE_BFC=true``, so every tensor TensorFlow allocates on the CPU goes
   through one BFC allocator, whose bytes in use and peak
   ``tf.config.experimental.get_memory_info("CPU:0")`` reports. (The default CPU allocator
   of a oneDNN build cannot be used: it serves allocations of <= 256 KiB from a separate
   pool and reports the *larger* of the two pools' peaks, not the peak of their sum; a
   tf.function holding 20 MB of 200 KB tensors reports a peak of 0 there, 19.6 MiB under
   BFC.) The worker builds the model, initialises it, builds the optimizer, then
   ``--mem-instances`` times: traces a new ``tf.function(model.train_step)`` (the step
   ``fit`` runs) with ``get_concrete_function`` -- tracing executes nothing --, records
   the bytes in use (weights, optimizer slots, the batch), resets the peak and executes
   the step ``--mem-executions`` times. A trace's ``step_peak`` is its highest peak minus
   the bytes in use before its first execution (the extra memory a training step needs);
   the configuration's figure, used by the ratios, is the median over its traces, printed
   with their range. Why several traces: the peak depends on the order in which the
   executor runs independent ops (the log-det series of different blocks need not run
   one after another), which is fixed per traced function but differs between traces,
   by up to +-20 % here, while executions of one trace agree within ~3 %. Workers use 1
   inter-op thread (2 intra-op). Cross-checks, printed: the first trace's execution
   replayed from ``tf.profiler``'s allocator events (peak of the bytes live tensors
   *requested*, and of the BFC chunks they hold, which can be up to twice as large), and
   the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) over
   the first execution, which also counts one-off costs (oneDNN kernels, thread stacks).

2. speed
   One training step of the 2D Residual Flow of normflows' ``examples/residual.ipynb``
   with the issue's settings: 8 blocks of [ActNorm, residual block with a LipSwish MLP
   2-64-64-2, c = 0.98], roulette log-det with 2 exact terms and geometric p = 0.5, the
   memory-efficient (Neumann) gradient, batch 512 (a fixed checkerboard batch), Adam 1e-3,
   the same number of spectral-norm power iterations per step on both sides
   (``--power-iters``, default 5).
   ours       ``build_flow("resflow", (2,), num_steps=8, hidden=64)``, ``n_iterations`` of
              every spectral-norm layer set to ``--power-iters``, ``model.initialize(x)``,
              ``compile(Adam(1e-3))``, timed over ``model.fit``'s training loop
              (``on_train_begin`` -> ``on_train_end``; the whole call is printed too), on
              ``Dataset.from_tensors(x).repeat()``; as the Glow benchmark.
   ours_xla   the same with ``compile(..., jit_compile=True)`` (information only).
   normflows  8 x [``nf.flows.Residual(nf.nets.LipschitzMLP([2, 64, 64, 2],
              lipschitz_const=0.98, init_zeros=True), reduce_memory=True)``,
              ``nf.flows.ActNorm(2)``], ``DiagGaussian(2, trainable=False)``,
              ``forward_kld``, ``torch.optim.Adam(lr=1e-3)``, and after each step
              ``nf.utils.update_lipschitz(model, --power-iters)`` as in that example
              (normflows' layers run no power iteration in ``forward``).
   Every system has its own worker process pinned to 2 threads; after untimed warm-up
   (tracing, compilation) the parent runs alternating timed rounds and takes the median;
   rounds where other jobs used more than ``--max-other`` cores are redone (as in
   ``glow_throughput.py``).

3. quality
   The same two flows trained for the same wall-clock budget (``--budget`` seconds each,
   training steps only: tracing, set-up and evaluation excluded) on 2D toy densities of
   ``tfpflows.data.toy`` (``--densities``), batch 512. Ours trains with ``model.fit`` on
   ``toy_dataset`` (fresh draws); normflows on a pool of 2**21 draws from the same
   generator (``toy_sample``, another seed), taken in order. The two train in alternating
   slices of ``--slice`` seconds, so machine-load drift hits both alike; the CPU other jobs
   used is printed. Before training: ours ``model.initialize(first batch)``, which also
   runs 200 power iterations per spectral-norm layer (``ResidualLayer.warm_up``), as
   normflows' layers do at construction; normflows' ActNorm initialises on its first
   batch. One untimed step each (ours: the trace, ~30 s; normflows: ~0.1 s).
   Evaluation on the same ``--n-test`` fresh draws for both, with each side's exact 2D
   log-det: ours ``model.log_prob`` (every ``ResidualLayer.eval_logdet`` is
   ``LogDetEstimator.exact()`` for 2D, checked), normflows ``model.eval()`` then
   ``log_prob`` (its ``iResBlock`` computes the 2x2 Jacobian by brute force in eval mode
   for 2D inputs, checked). Reported: test NLL (nats) with its standard error, the
   density's true negative log-density on the same points (checkerboard: exactly log 8;
   moons and eight_gaussians: from their generating formulas), and the gap NLL - true
   (a Monte-Carlo estimate of KL(data || model)); and the integral of exp(log q) over a
   grid on [-6, 6]^2, which is ~1 when the log-det is exact and the map invertible.

Output ends with::

    ratio resflow_memory_flat VALUE          # step_peak(k=2) / step_peak(k=20), target >= 0.8
    ratio resflow_memory_vs_naive VALUE      # step_peak(naive, 10) / step_peak(ours, 10), >= 2
    ratio resflow_step_vs_normflows VALUE    # normflows s/step / ours s/step, target >= 1.0
    ratio resflow_gap_vs_normflows VALUE     # checkerboard gap theirs / ours, target >= 1.0

Usage::

    python bench/resflow_bench.py                  # everything (~15 min on 2 quiet cores)
    python bench/resflow_bench.py --quick          # smoke run, tiny sizes (< 2 min)
    python bench/resflow_bench.py --parts memory   # one part (memory, speed, quality)
    python bench/resflow_bench.py --parts quality --budget 120 --densities checkerboard
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

from bench_workers import (THREADS, WorkerProcess, cpu_probe, emit, fit_marker, foreign_cores,
                           serve, worker_failed)

LR = 1e-3
COEFF = 0.98          # Lipschitz constant per layer (ours: build_flow's resflow default)
BATCH_2D = 512
TEST_SEED = 7         # toy_sample seed of the test points (both systems)
POOL_SEED = 8         # toy_sample seed of normflows' training pool
TRAIN_SEED = 1000     # ours: toy_dataset seeds TRAIN_SEED + slice (never collide with the above)
POOL_SIZE = 2 ** 21
MIB = 2.0 ** 20


# --------------------------------------------------------------------------- helpers
def fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "nan" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.{digits}f}"


def setup_tf(inter_op: int = THREADS):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return tf


def setup_torch():
    import torch

    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:
        pass
    return torch


def checkerboard_batch(n: int, seed: int = 0):
    """A fixed checkerboard batch (numpy, the formula of tfpflows.data.toy), [n, 2] float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, n)
    b = rng.integers(0, 2, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * b + np.mod(np.floor(x1), 2.0)
    return np.stack([x1, x2], axis=-1).astype("float32")


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def spectral_layers(model):
    from tfpflows.layers import lipschitz

    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, lipschitz._SpectralNormBase)]


def residual_layers(model):
    from tfpflows.layers.residual import ResidualLayer

    return [l for l in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(l, ResidualLayer)]


# --------------------------------------------------------------------------- 1. memory
def memory_worker(cfg: dict) -> dict:
    """One configuration in this fresh process (TF_CPU_ALLOCATOR_USE_BFC=true set by the
    parent): build the model, then `instances` times trace a new train-step function and
    measure its executions (each trace is scheduled differently; see the docstring)."""
    import gc

    tf = setup_tf(inter_op=cfg["inter_op"])
    import keras
    import numpy as np
    from tfpflows.bijectors.logdet import LogDetEstimator
    from tfpflows.models import build_flow

    shape = tuple(cfg["shape"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(cfg["batch"],) + shape).astype("float32")
    x += rng.random(size=x.shape, dtype="float32")
    x = tf.constant(np.minimum(x, np.float32(255.999)))
    model = build_flow("resflow", shape, num_levels=cfg["levels"], num_steps=cfg["steps"],
                       hidden=cfg["hidden"])
    model.initialize(x)
    est = LogDetEstimator(method="series", n_terms=cfg["k"],
                          neumann_gradient=cfg["neumann"])
    blocks = residual_layers(model)
    for layer in blocks:
        layer.train_logdet = est
    model.compile(optimizer=keras.optimizers.Adam(LR))
    model.optimizer.build(model.trainable_variables)
    mem = lambda: tf.config.experimental.get_memory_info("CPU:0")  # noqa: E731
    ins = []
    for i in range(cfg["instances"]):
        step = tf.function(model.train_step)
        t0 = time.perf_counter()
        step.get_concrete_function(x)   # traces; executes nothing
        trace_s = time.perf_counter() - t0
        gc.collect()
        base = mem()["current"]
        rss0 = _status_bytes("VmRSS")
        rss_ok = i == 0 and _reset_peak_rss()
        peaks, times, losses, rss_rise = [], [], [], None
        for j in range(cfg["executions"]):
            tf.config.experimental.reset_memory_stats("CPU:0")
            t0 = time.perf_counter()
            logs = step(x)
            losses.append(float(logs["loss"] if isinstance(logs, dict) else logs))
            times.append(time.perf_counter() - t0)
            peaks.append(mem()["peak"])
            if j == 0 and rss_ok:
                rss_rise = _status_bytes("VmHWM") - rss0
        profiled = (profiled_step_peak(tf, lambda: step(x)) if i == 0 and cfg["profiled"]
                    else None)
        ins.append({"base_mib": base / MIB, "peak_mib": max(peaks) / MIB,
                    "step_peak_mib": (max(peaks) - base) / MIB,
                    "exec_step_mib": [(p - base) / MIB for p in peaks],
                    "profiled": profiled,
                    "rss_rise_mib": None if rss_rise is None else rss_rise / MIB,
                    "trace_s": trace_s, "exec_s": times, "loss": losses[-1]})
        del step
        gc.collect()
    steps = sorted(r["step_peak_mib"] for r in ins)
    return {"instances": ins,
            "step_peak_mib": statistics.median(steps),
            "step_peak_range": [steps[0], steps[-1]],
            "peak_mib": statistics.median(r["peak_mib"] for r in ins),
            "base_mib": statistics.median(r["base_mib"] for r in ins),
            "params": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
            "blocks": len(blocks), "estimator": repr(est),
            "power_iters": sorted({l.n_iterations for l in spectral_layers(model)}),
            "allocator_bfc": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "")}


def profiled_step_peak(tf, run) -> dict:
    """Runs `run()` under tf.profiler and replays its allocator events.

    The allocator emits a MemoryAllocation / MemoryDeallocation event per tensor, with the
    bytes the op requested and the bytes of the chunk BFC handed out (up to twice as
    many: BFC splits a free chunk only when it is at least twice the request). Replaying
    the events in time order gives the peak, above the bytes in use before `run`, of the
    bytes requested by live tensors (`requested`) and of the chunks they hold (`chunks`,
    what `get_memory_info` counts).
    """
    import glob
    import shutil

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="resflow_prof_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0],
                  "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    events = []
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                kind = names.get(ev.metadata_id, "")
                if kind not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                st = {stat_names.get(s.metadata_id): (s.int64_value or s.uint64_value)
                      for s in ev.stats}
                events.append((line.timestamp_ns * 1000 + ev.offset_ps,
                               kind == "MemoryAllocation", int(st.get("addr", 0)),
                               int(st.get("requested_bytes", 0)),
                               int(st.get("allocation_bytes", 0))))
    events.sort()
    req = chunk = peak_req = peak_chunk = 0
    for _, alloc, _, r, c in events:
        sign = 1 if alloc else -1
        req += sign * r
        chunk += sign * c
        peak_req, peak_chunk = max(peak_req, req), max(peak_chunk, chunk)
    return {"requested": peak_req, "chunks": peak_chunk, "events": len(events)}


def memory_configs(args) -> list[dict]:
    geo = dict(shape=args.mem_shape, levels=args.mem_levels, steps=args.mem_steps,
               hidden=args.mem_hidden, executions=args.mem_executions,
               inter_op=args.mem_inter_op, instances=args.mem_instances,
               profiled=not args.no_profile)
    b = args.mem_batch
    out = [dict(name="ours_k2", k=2, neumann=True, batch=b),
           dict(name="ours_k10", k=10, neumann=True, batch=b),
           dict(name="ours_k20", k=20, neumann=True, batch=b),
           dict(name="naive_k10", k=10, neumann=False, batch=b)]
    if not args.no_scaling:
        half = dict(instances=max(1, args.mem_instances // 2))
        out += [dict(half, name="ours_k10_halfbatch", k=10, neumann=True, batch=b // 2),
                dict(half, name="naive_k10_halfbatch", k=10, neumann=False, batch=b // 2)]
    return [dict(geo, **c) for c in out]   # (the half-batch checks: half the instances)


def run_memory(args, ratios: dict) -> None:
    configs = memory_configs(args)
    shape = "x".join(str(s) for s in args.mem_shape)
    print(f"## memory: build_flow('resflow', ({shape}), num_levels={args.mem_levels}, "
          f"num_steps={args.mem_steps}, hidden={args.mem_hidden}), batch {args.mem_batch}, "
          f"Adam({LR}); train_logdet = LogDetEstimator('series', n_terms=k, "
          f"neumann_gradient=True|False) on every block; "
          f"{args.mem_instances} traced step function(s) per process x {args.mem_executions} "
          f"executions, inter_op_threads={args.mem_inter_op}; "
          f"TF_CPU_ALLOCATOR_USE_BFC=true; {args.mem_jobs} configuration(s) at a time",
          flush=True)
    env = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}
    results: dict[str, dict] = {}
    pending = list(configs)
    running: list[tuple[dict, Worker]] = []
    while pending or running:
        while pending and len(running) < max(1, args.mem_jobs):
            cfg = pending.pop(0)
            running.append((cfg, Worker("mem", args, ["--mem-config", json.dumps(cfg)], env)))
        cfg, w = running.pop(0)
        msg = w.read()
        w.close()
        if not msg.get("ready"):
            print(f"memory {cfg['name']}: FAILED ({msg.get('error')})", flush=True)
            continue
        res = msg["result"]
        results[cfg["name"]] = res
        ins = res["instances"]
        per = "; ".join(", ".join(f"{v:.1f}" for v in r["exec_step_mib"]) for r in ins)
        prof = ins[0]["profiled"]
        prof_s = (f"{prof['requested'] / MIB:.1f}/{prof['chunks'] / MIB:.1f}" if prof
                  else "n/a")
        lo, hi = res["step_peak_range"]
        print(f"memory {cfg['name']:20s} k={cfg['k']:2d} neumann={str(cfg['neumann']):5s} "
              f"batch={cfg['batch']:3d} step_peak_MiB={res['step_peak_mib']:7.1f} "
              f"[{lo:.1f}-{hi:.1f} over {len(ins)} trace(s); per execution: {per}] "
              f"abs_peak_MiB={res['peak_mib']:7.1f} state_MiB={res['base_mib']:.1f} "
              f"profiled_requested/chunks_MiB={prof_s} "
              f"rss_rise_first_exec_MiB={fmt(ins[0]['rss_rise_mib'], 1)} "
              f"trace_s={ins[0]['trace_s']:.1f} exec_s={ins[0]['exec_s'][-1]:.2f} "
              f"loss={ins[0]['loss']:.1f}", flush=True)
    if results:
        any_res = next(iter(results.values()))
        print(f"memory model: blocks={any_res['blocks']} params={any_res['params']} "
              f"spectral-norm power iterations per training call={any_res['power_iters']}")
    peak = {k: v["step_peak_mib"] for k, v in results.items()}
    for kind in ("ours_k10", "naive_k10"):
        half = kind + "_halfbatch"
        if kind in peak and half in peak:
            print(f"memory scaling check {kind}: step_peak(batch {args.mem_batch}) / "
                  f"step_peak(batch {args.mem_batch // 2}) = {fmt(peak[kind] / peak[half])} "
                  f"(~2 when the step's activations dominate)")
    if "ours_k2" in peak and "ours_k20" in peak:
        ratios["resflow_memory_flat"] = peak["ours_k2"] / peak["ours_k20"]
    if "naive_k10" in peak and "ours_k10" in peak:
        ratios["resflow_memory_vs_naive"] = peak["naive_k10"] / peak["ours_k10"]


# --------------------------------------------------------------------------- 2D flows
def build_ours_2d(num_steps: int, power_iters: int):
    from tfpflows.models import build_flow

    model = build_flow("resflow", (2,), num_steps=num_steps, hidden=64)
    layers = spectral_layers(model)
    for layer in layers:
        assert abs(layer.coeff - COEFF) < 1e-9, layer.coeff
        layer.n_iterations = int(power_iters)
    return model, len(layers)


def compile_ours(model, jit: bool):
    import keras

    kwargs = {"jit_compile": True} if jit else {}
    model.compile(optimizer=keras.optimizers.Adam(LR), **kwargs)


def build_normflows_2d(num_steps: int, power_iters: int):
    """normflows' examples/residual.ipynb, with the issue's sizes (8 blocks, 64-64, c=0.98)."""
    import normflows as nf

    flows = []
    for _ in range(num_steps):
        net = nf.nets.LipschitzMLP([2, 64, 64, 2], lipschitz_const=COEFF,
                                   max_lipschitz_iter=power_iters, init_zeros=True)
        flows += [nf.flows.Residual(net, reduce_memory=True, n_exact_terms=2, geom_p=0.5,
                                    n_dist="geometric")]
        flows += [nf.flows.ActNorm(2)]
    q0 = nf.distributions.DiagGaussian(2, trainable=False)
    return nf.NormalizingFlow(q0=q0, flows=flows)


class NormflowsTrainer:
    """normflows' training step as in its residual example (Adam, update_lipschitz)."""

    def __init__(self, num_steps: int, power_iters: int, seed: int = 0):
        import numpy as np

        torch = setup_torch()
        import normflows as nf

        torch.manual_seed(seed)
        np.random.seed(seed)   # normflows draws the roulette lengths with np.random
        self.torch, self.nf = torch, nf
        self.power_iters = int(power_iters)
        self.model = build_normflows_2d(num_steps, power_iters)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.params = int(sum(p.numel() for p in self.model.parameters() if p.requires_grad))

    def step(self, x) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.model.forward_kld(x)
        if bool(self.torch.isfinite(loss)):
            loss.backward()
            self.opt.step()
        self.nf.utils.update_lipschitz(self.model, self.power_iters)
        return float(loss.detach())


# --------------------------------------------------------------------------- 2. speed
class OursSpeed:
    def __init__(self, args, jit: bool):
        tf = setup_tf()
        self.tf = tf
        model, n_sn = build_ours_2d(args.num_blocks, args.power_iters)
        x = tf.constant(checkerboard_batch(BATCH_2D))
        model.initialize(x)
        compile_ours(model, jit)
        self.model = model
        self.ds = tf.data.Dataset.from_tensors(x).repeat()
        t0 = time.perf_counter()
        model.fit(self.ds, steps_per_epoch=1, epochs=1, verbose=0)   # traces / compiles
        self.first_step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = max(2, args.warmup_steps)
        hist = model.fit(self.ds, steps_per_epoch=n, epochs=1, verbose=0)
        self.rate = n / (time.perf_counter() - t0)
        self.loss = float(hist.history["loss"][-1])
        self.params = int(sum(int(math.prod(w.shape)) for w in model.trainable_weights))
        import keras

        self.config = {"jit_compile": model.jit_compile, "run_eagerly": model.run_eagerly,
                       "graph": not model.run_eagerly,
                       "spectral_norm_layers": n_sn, "n_iterations": args.power_iters,
                       "train_logdet": repr(residual_layers(model)[0].train_logdet),
                       "keras": keras.__version__, "tf": tf.__version__}

    def run(self, seconds: float) -> dict:
        """`fit` calls of about `seconds` of training loop in all (more than one call only
        when the step-rate estimate was low); `seconds=0`: one 2-step priming call."""
        steps = dt = wall = 0.0
        while True:
            n = max(2, int(round((seconds - dt) * self.rate)))
            marks = {}
            t0 = time.perf_counter()
            hist = self.model.fit(self.ds, steps_per_epoch=n, epochs=1, verbose=0,
                                  callbacks=[fit_marker(marks)])
            wall += time.perf_counter() - t0
            loop = marks["end"] - marks["begin"]
            steps, dt = steps + n, dt + loop
            if seconds <= 0:
                break               # priming: its rate is mostly fit's per-call overhead
            self.rate = n / loop
            if dt >= 0.9 * seconds:
                break
        self.loss = float(hist.history["loss"][-1])
        return {"steps": int(steps), "seconds": dt, "steps_s": steps / dt, "loss": self.loss,
                "wall_s": wall}


class NormflowsSpeed:
    def __init__(self, args):
        t = NormflowsTrainer(args.num_blocks, args.power_iters)
        self.trainer = t
        self.x = t.torch.from_numpy(checkerboard_batch(BATCH_2D))
        t0 = time.perf_counter()
        self.loss = t.step(self.x)    # first batch initialises ActNorm
        self.first_step_s = time.perf_counter() - t0
        for _ in range(max(2, args.warmup_steps)):
            self.loss = t.step(self.x)
        self.params = t.params
        self.config = {"torch": t.torch.__version__, "threads": t.torch.get_num_threads(),
                       "update_lipschitz_iters": args.power_iters,
                       "max_lipschitz_iter": args.power_iters}

    def run(self, seconds: float) -> dict:
        steps = 0
        t0 = time.perf_counter()
        while True:
            loss = self.trainer.step(self.x)
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        dt = time.perf_counter() - t0
        self.loss = loss
        return {"steps": steps, "seconds": dt, "steps_s": steps / dt, "loss": loss}


def speed_worker(args) -> int:
    name = args.worker
    t0 = time.perf_counter()
    try:
        if name == "speed_ours":
            system = OursSpeed(args, jit=False)
        elif name == "speed_ours_xla":
            system = OursSpeed(args, jit=True)
        elif name == "speed_normflows":
            system = NormflowsSpeed(args)
        else:
            raise ValueError(name)
    except Exception as e:
        return worker_failed(e)
    emit({"ready": True, "params": system.params, "config": system.config,
          "first_step_s": system.first_step_s, "setup_s": time.perf_counter() - t0,
          "loss": system.loss})

    def run(seconds):
        system.run(0.0)     # one untimed step (2 for fit): the process was idle
        return system.run(float(seconds))

    return serve({"run": run})


def run_speed(args, ratios: dict, pre: "Prestart") -> None:
    names = speed_names(args)
    print(f"## speed: 2D Residual Flow, {args.num_blocks} blocks [ActNorm, x + g(x)], "
          f"g = LipSwish MLP 2-64-64-2, c={COEFF}, roulette log-det (2 exact terms, "
          f"geometric p=0.5) with the Neumann gradient, batch {BATCH_2D}, Adam({LR}), "
          f"power iterations per step = {args.power_iters} on both sides; threads={THREADS} "
          f"rounds={args.rounds} seconds/round={args.seconds}", flush=True)
    workers, info = {}, {}
    for name in names:
        w, msg = pre.ready[("speed", name)]
        if not msg.get("ready"):
            print(f"setup {name}: FAILED ({msg.get('error')})", flush=True)
            w.close()
            continue
        workers[name], info[name] = w, msg
        print(f"setup {name}: params={msg['params']} first_step_s={msg['first_step_s']:.1f} "
              f"setup_s={msg['setup_s']:.1f} loss={msg['loss']:.3f} "
              f"config={json.dumps(msg['config'], sort_keys=True)}", flush=True)
    results: dict[str, list] = {}
    try:
        for r in range(args.rounds):
            order = list(workers.items())
            if r % 2:
                order.reverse()
            for name, w in order:
                for attempt in range(args.retries + 1):
                    probe = cpu_probe(w.proc.pid)
                    res = w.request(f"run {args.seconds}")
                    res["other"] = foreign_cores(probe, w.proc.pid)
                    if "steps_s" not in res or not res["other"] > args.max_other:
                        break
                    if attempt < args.retries:
                        print(f"round {r + 1} {name:10s} steps/s={res['steps_s']:7.2f} "
                              f"REDONE: other jobs used {res['other']:.2f} cores", flush=True)
                if "steps_s" not in res:
                    print(f"round {r + 1} {name}: FAILED ({res.get('error')})", flush=True)
                    continue
                results.setdefault(name, []).append(res)
                wall = f" fit_wall_s={res['wall_s']:.2f}" if "wall_s" in res else ""
                print(f"round {r + 1} {name:10s} steps/s={res['steps_s']:7.2f} "
                      f"ms/step={1000 / res['steps_s']:7.2f} steps={res['steps']:5d} "
                      f"s={res['seconds']:6.2f} loss={res['loss']:.3f} "
                      f"other_cores={res['other']:.2f}{wall}", flush=True)
    finally:
        for w in workers.values():
            w.close()
    med = {k: statistics.median(x["steps_s"] for x in v) for k, v in results.items()}
    for k, v in med.items():
        per = ", ".join(f"{x['steps_s']:.2f}" for x in results[k])
        print(f"median {k:10s} steps/s={v:8.2f} ms/step={1000 / v:7.2f}   rounds=[{per}]")
    if "ours" in info:
        c = info["ours"]["config"]
        print(f"ours ran {'as a graph (tf.function)' if c['graph'] else 'EAGERLY'}: "
              f"run_eagerly={c['run_eagerly']} jit_compile={c['jit_compile']}")
    if "ours_xla" in med and "normflows" in med:
        print(f"info ours_xla (jit_compile=True) vs normflows: step-time ratio "
              f"{fmt(med['ours_xla'] / med['normflows'])}; vs ours: "
              f"{fmt(med['ours_xla'] / med['ours']) if 'ours' in med else 'nan'}")
    if "ours" in med and "normflows" in med:
        ratios["resflow_step_vs_normflows"] = med["ours"] / med["normflows"]


# --------------------------------------------------------------------------- 3. quality
def true_log_density(name: str, x):
    """log p(x) of the toy density `name` (tfpflows.data.toy formulas), numpy [n]."""
    import numpy as np

    x = np.asarray(x, np.float64)
    if name == "checkerboard":
        inside = ((x[:, 0] >= -2) & (x[:, 0] < 2) & (x[:, 1] >= -2) & (x[:, 1] < 2)
                  & ((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0))
        return np.where(inside, -math.log(8.0), -np.inf)
    if name == "eight_gaussians":
        k = np.arange(8) * (math.pi / 4.0)
        centers = 4.0 * np.stack([np.cos(k), np.sin(k)], -1) / 1.414
        sd = 0.5 / 1.414
        d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
        comp = -d2 / (2 * sd * sd) - math.log(2 * math.pi * sd * sd) - math.log(8.0)
        return np.logaddexp.reduce(comp, axis=1)
    if name == "moons":
        # x = 2 (m(t) + 0.1 e) + (-1, -0.2): given t and the moon, N(2 m(t) + s, 0.2^2 I);
        # t ~ U[0, pi), moon ~ U{upper, lower}: a 1-D integral, by the midpoint rule.
        n_t = 4096
        t = (np.arange(n_t) + 0.5) * (math.pi / n_t)
        upper = np.stack([np.cos(t), np.sin(t)], -1)
        lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], -1)
        means = 2.0 * np.concatenate([upper, lower]) + np.array([-1.0, -0.2])
        sd = 0.2
        out = np.empty(len(x))
        for i in range(0, len(x), 512):
            d2 = ((x[i:i + 512, None, :] - means[None]) ** 2).sum(-1)
            comp = -d2 / (2 * sd * sd) - math.log(2 * math.pi * sd * sd)
            out[i:i + 512] = np.logaddexp.reduce(comp, axis=1) - math.log(2 * n_t)
        return out
    raise ValueError(f"no true density for {name!r}")


def grid_points(n: int, lim: float = 6.0):
    import numpy as np

    c = (np.arange(n) + 0.5) * (2 * lim / n) - lim
    xx, yy = np.meshgrid(c, c, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1).astype("float32"), (2 * lim / n) ** 2


class OursQuality:
    def __init__(self, args):
        tf = setup_tf()
        import numpy as np
        from tfpflows.data.toy import toy_dataset, toy_sample

        self.tf, self.np, self.args = tf, np, args
        self.toy_dataset = toy_dataset
        name = args.density
        # Shared data: the test points and normflows' training pool (same generator).
        test = toy_sample(name, args.n_test, seed=TEST_SEED).numpy()
        pool = toy_sample(name, args.pool_size, seed=POOL_SEED).numpy()
        np.save(os.path.join(args.data_dir, f"{name}_test.npy"), test)
        np.save(os.path.join(args.data_dir, f"{name}_pool.npy"), pool)
        model, _ = build_ours_2d(args.num_blocks, args.power_iters)
        blocks = residual_layers(model)
        if not callable(getattr(blocks[0], "warm_up", None)):
            # Older library: `initialize` does not warm up the power iteration; do it here.
            for layer in blocks:
                layer.network.update_vectors(200)
        first = toy_sample(name, BATCH_2D, seed=tf.constant([TRAIN_SEED, 0], tf.int64))
        model.initialize(first)
        compile_ours(model, jit=False)
        self.model = model
        self.slice = 0
        t0 = time.perf_counter()
        model.fit(toy_dataset(name, batch_size=BATCH_2D, seed=TRAIN_SEED - 1),
                  steps_per_epoch=1, verbose=0)   # traces: untimed, not in the budget
        self.first_step_s = time.perf_counter() - t0
        self.rate = None
        self.steps = 0
        self.trained_s = 0.0
        self.loss = float("nan")
        self.exact = all(l.eval_logdet.method == "exact" for l in residual_layers(model))

    def train(self, seconds: float) -> dict:
        steps = 10 if self.rate is None else max(1, int(round(seconds * self.rate)))
        ds = self.toy_dataset(self.args.density, batch_size=BATCH_2D,
                              seed=TRAIN_SEED + self.slice)
        self.slice += 1
        marks = {}
        hist = self.model.fit(ds, steps_per_epoch=steps, verbose=0,
                              callbacks=[fit_marker(marks)])
        dt = marks["end"] - marks["begin"]
        self.rate = steps / dt
        self.steps += steps
        self.trained_s += dt
        self.loss = float(hist.history["loss"][-1])
        return {"steps": steps, "seconds": dt, "loss": self.loss}

    def log_prob(self, x):
        out = []
        for i in range(0, len(x), 4096):
            out.append(self.model.log_prob(self.tf.constant(x[i:i + 4096])).numpy())
        return self.np.concatenate(out)


class NormflowsQuality:
    def __init__(self, args):
        import numpy as np

        self.np, self.args = np, args
        t = NormflowsTrainer(args.num_blocks, args.power_iters)
        self.trainer, self.torch = t, t.torch
        self.pool = t.torch.from_numpy(
            np.load(os.path.join(args.data_dir, f"{args.density}_pool.npy")))
        self.pos = 0
        t0 = time.perf_counter()
        self.loss = t.step(self._batch())     # first batch initialises ActNorm; untimed
        self.first_step_s = time.perf_counter() - t0
        self.steps = 0
        self.trained_s = 0.0
        self.exact = None

    def _batch(self):
        if self.pos + BATCH_2D > len(self.pool):
            self.pos = 0
        b = self.pool[self.pos:self.pos + BATCH_2D]
        self.pos += BATCH_2D
        return b

    def train(self, seconds: float) -> dict:
        steps = 0
        t0 = time.perf_counter()
        while True:
            loss = self.trainer.step(self._batch())
            steps += 1
            if time.perf_counter() - t0 >= seconds:
                break
        dt = time.perf_counter() - t0
        self.steps += steps
        self.trained_s += dt
        self.loss = loss
        return {"steps": steps, "seconds": dt, "loss": loss}

    def log_prob(self, x):
        model = self.trainer.model
        model.eval()
        blocks = [m.iresblock for m in model.flows if hasattr(m, "iresblock")]
        # iResBlock._logdetgrad uses the brute-force 2x2 Jacobian when not training and
        # the input is [N, 2].
        self.exact = all(not b.training for b in blocks) and x.shape[1] == 2
        out = []
        for i in range(0, len(x), 4096):
            xb = self.torch.from_numpy(x[i:i + 4096])
            out.append(model.log_prob(xb).detach().numpy())
        model.train()
        return self.np.concatenate(out)


def quality_worker(args) -> int:
    name = args.worker
    t0 = time.perf_counter()
    try:
        system = OursQuality(args) if name == "quality_ours" else NormflowsQuality(args)
    except Exception as e:
        return worker_failed(e)
    emit({"ready": True, "first_step_s": system.first_step_s,
          "setup_s": time.perf_counter() - t0, "loss": system.loss})
    import numpy as np


    def evaluate():
        test = np.load(os.path.join(args.data_dir, f"{args.density}_test.npy"))
        t1 = time.perf_counter()
        lp = system.log_prob(test)
        grid, cell = grid_points(args.grid)
        integral = float(np.sum(np.exp(system.log_prob(grid).astype(np.float64))) * cell)
        np.save(os.path.join(args.data_dir, f"{args.density}_{name}_logq.npy"), lp)
        return {"nll": float(-np.mean(lp)), "nll_se": float(np.std(lp) / math.sqrt(len(lp))),
                "finite": int(np.isfinite(lp).sum()), "n": int(len(lp)),
                "integral": integral, "exact_logdet": bool(system.exact),
                "steps": system.steps, "trained_s": system.trained_s,
                "eval_s": time.perf_counter() - t1, "log_q_path": args.data_dir}

    return serve({"train": lambda seconds: system.train(float(seconds)), "eval": evaluate})


def speed_names(args) -> list[str]:
    return [n for n in args.speed_systems.split(",") if n]


class Prestart:
    """Starts the speed workers and ours' quality workers at once, so that their untimed
    set-ups (building, and the ~30 s trace of our first step, single-threaded Python) run
    side by side. `wait()` collects every ready message; it is called before anything is
    timed, so no set-up overlaps a timed run."""

    def __init__(self, args, parts):
        self.data_dir = tempfile.mkdtemp(prefix="resflow_bench_")
        self.workers = {}
        if "speed" in parts:
            for name in speed_names(args):
                self.workers[("speed", name)] = Worker("speed_" + name, args, [])
        if "quality" in parts:
            for d in [d for d in args.densities.split(",") if d]:
                self.workers[("quality", d)] = Worker(
                    "quality_ours", args, [f"--density={d}", f"--data-dir={self.data_dir}"])
        self.ready = None

    def wait(self):
        if self.ready is None:
            t0 = time.perf_counter()
            self.ready = {k: (w, w.read()) for k, w in self.workers.items()}
            if self.workers:
                print(f"# workers' set-up: waited {time.perf_counter() - t0:.0f} s for "
                      f"{len(self.workers)} worker(s)", flush=True)
        return self.ready

    def close(self):
        for w in self.workers.values():
            w.close()
        import shutil

        shutil.rmtree(self.data_dir, ignore_errors=True)


def run_quality(args, ratios: dict, pre: "Prestart") -> None:
    densities = [d for d in args.densities.split(",") if d]
    print(f"## quality: the speed part's two flows trained {args.budget:.0f} s each "
          f"(training steps only) in alternating slices of {args.slice:.0f} s, batch "
          f"{BATCH_2D}, power iterations per step = {args.power_iters}; test NLL on "
          f"{args.n_test} fresh draws (toy_sample seed {TEST_SEED}), exact 2D log-dets; "
          f"grid integral over [-6, 6]^2 ({args.grid}^2 cells)", flush=True)
    quality_densities(args, ratios, pre, densities)


def quality_densities(args, ratios, pre, densities) -> None:
    import numpy as np

    data_dir = pre.data_dir
    for density in densities:
        extra = [f"--density={density}", f"--data-dir={data_dir}"]
        ours, msg_o = pre.ready[("quality", density)]
        if not msg_o.get("ready"):
            print(f"quality {density} ours: setup FAILED ({msg_o.get('error')})", flush=True)
            ours.close()
            continue
        theirs = Worker("quality_normflows", args, extra)
        msg_n = theirs.read()
        if not msg_n.get("ready"):
            print(f"quality {density} normflows: setup FAILED ({msg_n.get('error')})",
                  flush=True)
            ours.close()
            theirs.close()
            continue
        print(f"quality {density}: setup ours first_step_s={msg_o['first_step_s']:.1f} "
              f"(trace, untimed) setup_s={msg_o['setup_s']:.1f}; normflows "
              f"first_step_s={msg_n['first_step_s']:.2f} setup_s={msg_n['setup_s']:.1f}",
              flush=True)
        systems = {"ours": ours, "normflows": theirs}
        used = {k: 0.0 for k in systems}
        steps = {k: 0 for k in systems}
        other = {k: [] for k in systems}
        last = {k: float("nan") for k in systems}
        r = 0
        try:
            while any(used[k] < args.budget - 0.05 for k in systems):
                order = list(systems) if r % 2 == 0 else list(reversed(list(systems)))
                for k in order:
                    left = args.budget - used[k]
                    if left < 0.05:
                        continue
                    w = systems[k]
                    probe = cpu_probe(w.proc.pid)
                    res = w.request(f"train {min(args.slice, left)}")
                    if "seconds" not in res:
                        raise RuntimeError(f"{k}: {res.get('error')}")
                    oc = foreign_cores(probe, w.proc.pid)
                    used[k] += res["seconds"]
                    steps[k] += res["steps"]
                    other[k].append(oc)
                    last[k] = res["loss"]
                    if args.verbose:
                        print(f"  slice {r + 1} {k:9s} steps={res['steps']:5d} "
                              f"s={res['seconds']:6.2f} loss={res['loss']:.3f} "
                              f"other_cores={oc:.2f}", flush=True)
                r += 1
            evals = {k: systems[k].request("eval") for k in systems}
        except Exception as e:
            print(f"quality {density}: FAILED ({e})", flush=True)
            continue
        finally:
            for w in systems.values():
                w.close()
        test = np.load(os.path.join(data_dir, f"{density}_test.npy"))
        true = true_log_density(density, test)
        true_nll = float(-np.mean(true))
        gaps = {}
        for k in systems:
            e = evals[k]
            if "nll" not in e:
                print(f"quality {density} {k}: eval FAILED ({e.get('error')})", flush=True)
                continue
            lq = np.load(os.path.join(data_dir, f"{density}_quality_{k}_logq.npy"))
            diff = true - lq.astype(np.float64)
            gap = float(np.mean(diff))
            gap_se = float(np.std(diff) / math.sqrt(len(diff)))
            gaps[k] = gap
            oc = statistics.mean(other[k]) if other[k] else float("nan")
            print(f"quality {density:15s} {k:9s} test_nll={e['nll']:.4f} +- {e['nll_se']:.4f} "
                  f"true_nll={true_nll:.4f} gap={gap:.4f} +- {gap_se:.4f} "
                  f"steps={steps[k]} trained_s={used[k]:.1f} "
                  f"steps/s={steps[k] / max(used[k], 1e-9):.1f} last_train_loss={last[k]:.3f} "
                  f"grid_integral={e['integral']:.4f} exact_logdet={e['exact_logdet']} "
                  f"finite={e['finite']}/{e['n']} other_cores_mean={oc:.2f} "
                  f"eval_s={e['eval_s']:.1f}", flush=True)
        if "ours" in gaps and "normflows" in gaps:
            g_o, g_n = gaps["ours"], gaps["normflows"]
            val = g_n / g_o if g_o > 0 else float("inf") if g_n > 0 else float("nan")
            if density == "checkerboard":
                print(f"quality checkerboard: gap to log 8 = {math.log(8):.4f}: ours "
                      f"{g_o:.4f}, normflows {g_n:.4f}")
                ratios["resflow_gap_vs_normflows"] = val
            else:
                print(f"info quality {density}: gap ratio normflows / ours = {fmt(val)}")


# --------------------------------------------------------------------------- 4. start-up
def startup_worker(args) -> int:
    """Seconds from building the 2D Residual Flow of the speed part to the end of its first
    training step (ours: build, ActNorm initialisation, compile, one `fit` step, which
    traces; normflows: construction and one step), in a fresh process, imports excluded."""
    try:
        if args.worker == "startup_ours":
            tf = setup_tf()
            import keras  # noqa: F401
            import tfpflows.models  # noqa: F401
            t0 = time.perf_counter()
            model, _ = build_ours_2d(args.num_blocks, args.power_iters)
            x = tf.constant(checkerboard_batch(BATCH_2D))
            model.initialize(x)
            compile_ours(model, False)
            model.fit(tf.data.Dataset.from_tensors(x).repeat(), steps_per_epoch=1, epochs=1,
                      verbose=0)
        elif args.worker == "startup_normflows":
            setup_torch()
            import normflows  # noqa: F401
            t0 = time.perf_counter()
            t = NormflowsTrainer(args.num_blocks, args.power_iters)
            t.step(t.torch.from_numpy(checkerboard_batch(BATCH_2D)))
        else:
            raise ValueError(args.worker)
        seconds = time.perf_counter() - t0
    except Exception as e:
        return worker_failed(e)
    emit({"ready": True, "startup_s": seconds})
    return 0


def run_startup(args, ratios: dict, repeats: int = 2) -> None:
    """Each system's start-up in fresh processes, one at a time, alternating."""
    print(f"## start-up: 2D Residual Flow of the speed part, {args.num_blocks} blocks, build "
          f"to the end of the first training step, imports excluded, {repeats} fresh "
          "processes each, one at a time", flush=True)
    times: dict[str, list] = {"ours": [], "normflows": []}
    for r in range(repeats):
        for name in (("ours", "normflows") if r % 2 == 0 else ("normflows", "ours")):
            w = Worker(f"startup_{name}", args, [])
            msg = w.read()
            w.close()
            if not msg.get("ready"):
                print(f"startup {name}: FAILED ({msg.get('error')})", flush=True)
                return
            times[name].append(msg["startup_s"])
            print(f"startup {name:9s} {msg['startup_s']:6.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios["startup_vs_normflows_resflow"] = med["normflows"] / med["ours"]


# --------------------------------------------------------------------------- plumbing
class Worker(WorkerProcess):
    """This script as a worker process (`--worker=NAME`), with the parent's settings."""

    def __init__(self, name: str, args, extra: list[str], env_extra: dict | None = None):
        log = (os.path.join(args.log_dir, f"resflow_{name}_{os.getpid()}_"
                            f"{int(time.time() * 1000) % 10 ** 8}.log") if args.log_dir else "")
        super().__init__(__file__, name, worker_args(args) + extra, log, env_extra)


def worker_args(args) -> list[str]:
    """The settings a worker needs, forwarded from the parent's arguments."""
    return [f"--num-blocks={args.num_blocks}", f"--power-iters={args.power_iters}",
            f"--warmup-steps={args.warmup_steps}", f"--n-test={args.n_test}",
            f"--pool-size={args.pool_size}", f"--grid={args.grid}"]


def parent_main(args) -> int:
    t_start = time.perf_counter()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"memory", "speed", "quality", "startup"}
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}; expected memory, speed, "
                         "quality, startup")
    print(f"# resflow bench: parts={','.join(parts)} quick={args.quick} threads={THREADS} "
          f"python={sys.version.split()[0]} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.2f}", flush=True)
    ratios: dict[str, float] = {}
    # The speed and quality workers are started together and set up side by side (their
    # set-up is untimed; our first step's trace is single-threaded Python), after the
    # memory part, whose workers then have the machine to themselves; --quick starts them
    # before it to save time. All are ready before the first timed run.
    pre = None
    timed = [p for p in parts if p not in ("memory", "startup")]
    if timed and args.quick:
        pre = Prestart(args, timed)
    try:
        for part in ("startup", "memory", "speed", "quality"):
            if part not in parts:
                continue
            if part == "startup":
                run_startup(args, ratios)
                continue
            if part != "memory":
                if pre is None:
                    pre = Prestart(args, timed)
                pre.wait()
            t0 = time.perf_counter()
            if part == "memory":
                run_memory(args, ratios)
            elif part == "speed":
                run_speed(args, ratios, pre)
            else:
                run_quality(args, ratios, pre)
            print(f"# {part} part: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        if pre is not None:
            pre.close()
    print(f"# total wall time {time.perf_counter() - t_start:.0f} s")
    for name in ("resflow_memory_flat", "resflow_memory_vs_naive",
                 "resflow_step_vs_normflows", "resflow_gap_vs_normflows",
                 "startup_vs_normflows_resflow"):
        if name in ratios:
            print(f"ratio {name} {fmt(ratios[name])}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes and budgets (under ~2 min)")
    p.add_argument("--parts", default="startup,memory,speed,quality",
                   help="comma list among memory, speed, quality")
    # memory
    p.add_argument("--mem-shape", default="32,32,3",
                   type=lambda s: [int(v) for v in s.replace("x", ",").split(",")])
    p.add_argument("--mem-levels", type=int, default=2)
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--mem-hidden", type=int, default=64)
    p.add_argument("--mem-batch", type=int, default=64)
    p.add_argument("--mem-executions", type=int, default=2,
                   help="step executions measured per model instance")
    p.add_argument("--mem-instances", type=int, default=3,
                   help="train-step functions traced and measured per configuration (the "
                        "reported step peak is their median)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the tf.profiler replay of the first instance's allocations")
    p.add_argument("--mem-inter-op", type=int, default=1,
                   help="inter-op threads of the memory workers (1: steadier peaks)")
    p.add_argument("--mem-jobs", type=int, default=2,
                   help="memory workers run at a time")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the half-batch configurations that check the method")
    # speed
    p.add_argument("--speed-systems", default="ours,ours_xla,normflows",
                   help="comma list among ours, ours_xla, normflows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per timed round")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--max-other", type=float, default=0.5,
                   help="redo a timed speed round when other jobs used more cores")
    p.add_argument("--retries", type=int, default=2)
    # speed + quality
    p.add_argument("--num-blocks", type=int, default=8, help="2D flow blocks")
    p.add_argument("--power-iters", type=int, default=5,
                   help="spectral-norm power iterations per training step, both sides")
    # quality
    p.add_argument("--densities", default="checkerboard,moons",
                   help="comma list of tfpflows.data.toy densities with a known true "
                        "density: checkerboard, moons, eight_gaussians (each adds ~3.5 min)")
    p.add_argument("--budget", type=float,
                   default=float(os.environ.get("RESFLOW_BENCH_BUDGET", 90.0)),
                   help="training seconds per system and density (env RESFLOW_BENCH_BUDGET)")
    p.add_argument("--slice", type=float, default=15.0,
                   help="seconds per alternating training slice")
    p.add_argument("--n-test", type=int, default=20000)
    p.add_argument("--pool-size", type=int, default=POOL_SIZE)
    p.add_argument("--grid", type=int, default=300, help="grid cells per axis (integral)")
    p.add_argument("--verbose", action="store_true", help="print every training slice")
    p.add_argument("--log-dir", default="", help="write each worker's stderr here")
    # internal (worker processes)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--mem-config", default="", help=argparse.SUPPRESS)
    p.add_argument("--density", default="", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "mem":
        try:
            res = memory_worker(json.loads(args.mem_config))
        except Exception as e:
            return worker_failed(e)
        emit({"ready": True, "result": res})
        return 0
    if args.worker.startswith("speed_"):
        return speed_worker(args)
    if args.worker.startswith("quality_"):
        return quality_worker(args)
    if args.worker.startswith("startup_"):
        return startup_worker(args)
    if args.quick:
        args.mem_shape, args.mem_levels, args.mem_steps = [16, 16, 3], 2, 1
        args.mem_hidden, args.mem_batch, args.mem_executions = 32, 16, 1
        args.mem_instances, args.no_scaling, args.mem_jobs = 2, True, 4
        args.speed_systems = "ours,normflows"
        args.rounds, args.seconds, args.warmup_steps = 1, 3.0, 2
        args.num_blocks = 2
        args.densities, args.budget, args.slice = "checkerboard", 6.0, 3.0
        args.n_test, args.pool_size, args.grid = 4000, 2 ** 16, 100
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
