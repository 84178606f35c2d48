"""Where does our Glow training step spend its time? (companion of glow_throughput.py)

Same configuration as ``glow_throughput.py``: 32x32x3, L=3, K=4, hidden 400, batch 32,
Adam(1e-3), 2 threads. Prints, in milliseconds per step (median of ``--reps``):

1. ours, with and without XLA: forward only (mean log-prob), forward+backward (gradients
   of every trainable weight), the Keras compiled train function (full step with optimizer
   and metrics), and the per-call overhead of ``model.fit`` (fit of 1 step vs of n steps).
2. an op-type breakdown of the non-XLA train step from a ``tf.profiler`` trace (self time
   per TF op type, top ops by name, and time per name scope prefix, i.e. per level).
3. the coupling conditioner networks alone (conv3x3 - conv1x1 - conv3x3, 400 wide, the 12
   of the model at their level shapes), forward+backward, TF/Keras 3 vs PyTorch (PyTorch in
   a subprocess with 2 threads): the floor set by the convolutions.

Usage::

    python bench/profile_glow.py [--reps 5] [--no-xla] [--trace DIR]
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glow_throughput as gt  # noqa: E402  (shared constants and data)

LEVEL_SHAPES = [  # (H, W, C) seen by the steps of each level
    (gt.EVENT_SHAPE[0] // 2 ** (i + 1), gt.EVENT_SHAPE[1] // 2 ** (i + 1),
     gt.EVENT_SHAPE[2] * 2 ** (i + 2)) for i in range(gt.NUM_LEVELS)]


def loss_of(out):
    """Keras' train_function returns logs (or an Optional of them); read the loss."""
    logs = out.get_value() if hasattr(out, "get_value") else out
    return float(logs["loss"])


def timeit(fn, reps, sync=lambda r: r):
    sync(fn())  # warm
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sync(fn())
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


# ------------------------------------------------------------------ torch conv nets
def torch_convnets(reps: int) -> dict:
    import torch

    torch.set_num_threads(gt.THREADS)
    out = {}
    total = 0.0
    for (h, w, c) in LEVEL_SHAPES:
        nets = [torch.nn.Sequential(
            torch.nn.Conv2d(c // 2, gt.HIDDEN, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(gt.HIDDEN, gt.HIDDEN, 1), torch.nn.ReLU(),
            torch.nn.Conv2d(gt.HIDDEN, c, 3, padding=1)) for _ in range(gt.NUM_STEPS)]
        params = [p for n in nets for p in n.parameters()]
        x = torch.randn(gt.BATCH, c // 2, h, w, requires_grad=True)

        def step():
            for p in params:
                p.grad = None
            loss = sum((n(x) ** 2).mean() for n in nets)
            loss.backward()
            return loss

        def fwd():
            with torch.no_grad():
                return sum((n(x) ** 2).mean() for n in nets)

        key = f"{h}x{w}x{c}"
        out[key] = {"fwd": timeit(fwd, reps, float), "fwd_bwd": timeit(step, reps, float)}
        total += out[key]["fwd_bwd"]
    out["total_fwd_bwd"] = total
    return out


# ------------------------------------------------------------------ TF parts
def tf_convnets(tf, reps: int, jit: bool) -> dict:
    from tfpflows.layers import networks

    out = {}
    total = 0.0
    for (h, w, c) in LEVEL_SHAPES:
        nets = [networks.glow_conv_net(gt.HIDDEN, c) for _ in range(gt.NUM_STEPS)]
        x = tf.random.normal([gt.BATCH, h, w, c // 2])
        for n in nets:
            n(x)
        variables = [v.value if hasattr(v, "value") else v for n in nets
                     for v in n.trainable_weights]

        @tf.function(jit_compile=jit)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.add_n([tf.reduce_mean(n(x) ** 2) for n in nets])
            return tape.gradient(loss, [x] + variables)

        @tf.function(jit_compile=jit)
        def fwd():
            return tf.add_n([tf.reduce_mean(n(x) ** 2) for n in nets])

        key = f"{h}x{w}x{c}"
        out[key] = {"fwd": timeit(fwd, reps, lambda r: float(r)),
                    "fwd_bwd": timeit(step, reps, lambda r: float(r[0][0, 0, 0, 0]))}
        total += out[key]["fwd_bwd"]
    out["total_fwd_bwd"] = total
    return out


def ours_parts(tf, keras, reps: int, jit: bool) -> dict:
    from tfpflows.models import build_flow

    x = tf.constant(gt.make_pixels())
    model = build_flow("glow", event_shape=gt.EVENT_SHAPE, num_levels=gt.NUM_LEVELS,
                       num_steps=gt.NUM_STEPS, hidden=gt.HIDDEN)
    model.initialize(x)
    model.compile(optimizer=keras.optimizers.Adam(gt.LR), **({"jit_compile": True} if jit else {}))
    variables = model.trainable_variables

    @tf.function(jit_compile=jit)
    def fwd():
        return -tf.reduce_mean(model.log_prob(x))

    @tf.function(jit_compile=jit)
    def fwd_bwd():
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.log_prob(x))
        grads = tape.gradient(loss, variables)
        return loss, grads

    res = {}
    t0 = time.perf_counter()
    fwd()
    res["trace_fwd_s"] = time.perf_counter() - t0
    res["fwd_ms"] = timeit(fwd, reps, float)
    t0 = time.perf_counter()
    fwd_bwd()
    res["trace_fwd_bwd_s"] = time.perf_counter() - t0
    res["fwd_bwd_ms"] = timeit(fwd_bwd, reps, lambda r: float(r[0]))
    ds = tf.data.Dataset.from_tensors(x).repeat()
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=1, verbose=0)
    res["trace_train_s"] = time.perf_counter() - t0
    it = iter(ds)
    res["train_fn_ms"] = timeit(lambda: model.train_function(it), reps, loss_of)
    n = max(3, reps)
    f1 = timeit(lambda: model.fit(ds, steps_per_epoch=1, verbose=0), 3)
    fn = timeit(lambda: model.fit(ds, steps_per_epoch=n + 1, verbose=0), 3)
    res["fit_ms_per_step"] = (fn - f1) / n
    res["fit_call_overhead_ms"] = f1 - res["fit_ms_per_step"]
    res["num_trainable_variables"] = len(variables)
    return res, model, ds


def op_breakdown(tf, model, ds, trace_dir: str, steps: int = 3) -> None:
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    it = iter(ds)
    loss_of(model.train_function(it))
    tf.profiler.experimental.start(trace_dir)
    for _ in range(steps):
        loss_of(model.train_function(it))
    tf.profiler.experimental.stop()
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    data, ok = plugin.xspace_to_tools_data(files[-1:], "framework_op_stats", {})
    if not ok:
        print("  (profiler conversion failed)")
        return
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [c.get("v") if isinstance(c, dict) else c for c in r["c"]]))
            for r in table["rows"]]
    rows = [r for r in rows if r.get("host_or_device") in ("Host", "Device", None)]
    total = sum(float(r["total_self_time"]) for r in rows) or 1.0
    by_type = collections.Counter()
    by_scope = collections.Counter()
    for r in rows:
        t = float(r["total_self_time"])
        by_type[r["type"]] += t
        name = r["operation"]
        parts = [p for p in name.split("/") if p]
        scope = "/".join(parts[:3]) if len(parts) > 1 else "(top)"
        by_scope[scope] += t
    print(f"  total op self time {total / 1000 / steps:.1f} ms/step over {steps} steps "
          f"({len(rows)} distinct ops)")
    print("  by op type (ms/step, %):")
    for k, v in by_type.most_common(18):
        print(f"    {k:34s} {v / 1000 / steps:8.1f}  {100 * v / total:5.1f}%")
    print("  top ops by self time (ms/step):")
    for r in sorted(rows, key=lambda r: -float(r["total_self_time"]))[:15]:
        print(f"    {float(r['total_self_time']) / 1000 / steps:7.1f}  {r['type']:22s} "
              f"{r['operation'][:110]}")
    print("  by name scope prefix (ms/step):")
    for k, v in by_scope.most_common(12):
        print(f"    {v / 1000 / steps:8.1f}  {k[:110]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-xla", action="store_true", help="skip the XLA measurements")
    p.add_argument("--trace", default="", help="keep the tf.profiler trace in this directory")
    p.add_argument("--torch-convnets", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(gt.THREADS))
    if args.torch_convnets:
        print(json.dumps(torch_convnets(args.reps)))
        return 0

    tf = gt.setup_tf_threads()
    import keras

    print(f"# profile of ours: L={gt.NUM_LEVELS} K={gt.NUM_STEPS} hidden={gt.HIDDEN} "
          f"batch={gt.BATCH} threads={gt.THREADS} level shapes={LEVEL_SHAPES}", flush=True)
    res, model, ds = ours_parts(tf, keras, args.reps, jit=False)
    print("ours (no XLA):", json.dumps({k: round(v, 2) for k, v in res.items()}), flush=True)
    print("op breakdown of the non-XLA train step:", flush=True)
    trace_dir = args.trace or tempfile.mkdtemp(prefix="glow_prof_")
    op_breakdown(tf, model, ds, trace_dir)
    if not args.no_xla:
        res_x, _, _ = ours_parts(tf, keras, args.reps, jit=True)
        print("ours (XLA):", json.dumps({k: round(v, 2) for k, v in res_x.items()}), flush=True)

    print("conditioner nets alone (12 nets, fwd / fwd+bwd ms per step):", flush=True)
    tfc = tf_convnets(tf, args.reps, jit=False)
    print("  tf/keras3      :", json.dumps({k: v if isinstance(v, float) else
                                           {a: round(b, 1) for a, b in v.items()}
                                           for k, v in tfc.items()}), flush=True)
    if not args.no_xla:
        tfx = tf_convnets(tf, args.reps, jit=True)
        print("  tf/keras3 XLA  :", json.dumps({k: v if isinstance(v, float) else
                                               {a: round(b, 1) for a, b in v.items()}
                                               for k, v in tfx.items()}), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(gt.THREADS))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-convnets",
                          f"--reps={args.reps}"], capture_output=True, text=True, env=env)
    try:
        tc = json.loads(out.stdout.strip().splitlines()[-1])
        print("  torch (NCHW)   :", json.dumps({k: v if isinstance(v, float) else
                                               {a: round(b, 1) for a, b in v.items()}
                                               for k, v in tc.items()}), flush=True)
    except Exception:
        print("  torch failed:", out.stderr[-500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
