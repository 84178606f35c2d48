"""How far can `ratio glow_vs_tfp_glow` go in float32 on this CPU? (companion of glow_throughput.py)

The Glow step of both libraries is dominated by the coupling networks (conv3x3 - conv1x1 -
conv3x3, 400 wide). TFP's `tfb.Glow` evaluates each network twice per log-prob (in
`inverse` and again in `inverse_log_det_jacobian`, both on the tape), tfpflows once. So

    step_tfp  ~ 2 * nets_tfp + adam + flow_tfp
    step_ours ~     nets_ours + adam + flow_ours

and the ratio step_tfp / step_ours can exceed 2 only if TFP's own flow arithmetic costs more
than the shared optimizer update plus twice ours. This script measures every term in one
process, interleaved over ``--rounds`` rounds (median of each), same configuration as
glow_throughput.py (32x32x3, L=3, K=4, hidden 400, batch 32, Keras 3 Adam, 2 threads):

  nets_ours   our 12 conditioner networks at their level shapes, forward + backward
              (gradients of the input and every weight), chained one after another as in
              the flow
  nets_tfp    the same for 12 `tfb.GlowDefaultNetwork`s (tf_keras; 1x1 as a Conv2D)
  adam        one Keras 3 Adam update of our 124 variables (3.76 M parameters)
  step_ours   our compiled Keras train function (what `fit` runs per step)
  step_tfp    TFP's `tf.function` training step (as in glow_throughput.py)

and prints the derived figures:

  tfp_net_passes   (step_tfp - adam) / nets_tfp: network evaluations per TFP step (~2,
                   plus TFP's flow arithmetic)
  flow_ours        step_ours - nets_ours - adam: our flow's own cost
  ratio_measured   step_tfp / step_ours (one process, both TF: information only; the
                   headline ratio is glow_throughput.py's, one process per system)
  ratio_ceiling    step_tfp / (nets_ours + adam): the ratio if our flow arithmetic were free

Usage::

    python bench/glow_ceiling.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glow_throughput as gt  # noqa: E402  (shared configuration and the TFP system)

LEVEL_SHAPES = [(gt.EVENT_SHAPE[0] // 2 ** (i + 1), gt.EVENT_SHAPE[1] // 2 ** (i + 1),
                 gt.EVENT_SHAPE[2] * 2 ** (i + 2)) for i in range(gt.NUM_LEVELS)]


def nets_step(tf, make_net):
  """A tf.function running forward+backward of the 12 coupling networks."""
  nets, xs = [], []
  for (h, w, c) in LEVEL_SHAPES:
    for _ in range(gt.NUM_STEPS):
      net = make_net((h, w, c // 2), c)
      x = tf.random.normal([gt.BATCH, h, w, c // 2])
      net(x)
      nets.append(net)
      xs.append(x)
  variables = [v.value if hasattr(v, "value") and not isinstance(v, tf.Variable) else v
               for n in nets for v in n.trainable_weights]

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch(xs)
      losses, prev = [], tf.constant(0.0)
      for n, x in zip(nets, xs):
        # A scalar dependency chains the networks one after another, as in a flow (left
        # independent, TF's inter-op pool would overlap them and flatter the figure).
        losses.append(tf.reduce_mean(n(x + prev) ** 2))
        prev = 1e-9 * losses[-1]
      loss = tf.add_n(losses)
    grads = tape.gradient(loss, xs + variables)
    return tf.add_n([tf.reduce_sum(g) for g in grads])

  return lambda: float(step())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--reps", type=int, default=3, help="calls per measurement per round")
  args = p.parse_args(argv)
  os.environ.setdefault("OMP_NUM_THREADS", str(gt.THREADS))
  tf = gt.setup_tf_threads()
  import keras
  import tensorflow_probability as tfp
  from tfpflows.layers import networks
  from tfpflows.models import build_flow

  x = tf.constant(gt.make_pixels())
  model = build_flow("glow", event_shape=gt.EVENT_SHAPE, num_levels=gt.NUM_LEVELS,
                     num_steps=gt.NUM_STEPS, hidden=gt.HIDDEN)
  model.initialize(x)
  model.compile(optimizer=keras.optimizers.Adam(gt.LR))
  ds = tf.data.Dataset.from_tensors(x).repeat()
  model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)       # traces the train function
  it = iter(ds)

  def step_ours():
    out = model.train_function(it)
    logs = out.get_value() if hasattr(out, "get_value") else out
    return float(logs["loss"])

  variables = model.trainable_weights
  grads = [tf.random.normal(v.shape) * 1e-3 for v in variables]
  opt = keras.optimizers.Adam(gt.LR)
  opt.build(variables)
  adam_fn = tf.function(lambda: opt.apply_gradients(zip(grads, variables)))

  def adam():
    adam_fn()
    return float(opt.iterations)

  tfp_system = gt.TFPSystem(jit=False, warmup_steps=1)
  measures = {
      "nets_ours": nets_step(tf, lambda shape, c: networks.glow_conv_net(gt.HIDDEN, c)),
      "nets_tfp": nets_step(tf, lambda shape, c: tfp.bijectors.GlowDefaultNetwork(
          shape, num_hidden=gt.HIDDEN)),
      "adam": adam,
      "step_ours": step_ours,
      "step_tfp": lambda: float(tfp_system.step(tfp_system.x)),
  }
  for fn in measures.values():     # warm: traces, first allocations
    fn()
    fn()
  times = {k: [] for k in measures}
  for r in range(args.rounds):
    for name, fn in measures.items():
      ts = []
      for _ in range(args.reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
      times[name].append(1000 * statistics.median(ts))
    print(f"round {r + 1}: " + " ".join(f"{k}={v[-1]:.1f}ms" for k, v in times.items()),
          flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  derived = {
      "tfp_net_passes": (med["step_tfp"] - med["adam"]) / med["nets_tfp"],
      "flow_ours_ms": med["step_ours"] - med["nets_ours"] - med["adam"],
      "ratio_measured": med["step_tfp"] / med["step_ours"],
      "ratio_ceiling": med["step_tfp"] / (med["nets_ours"] + med["adam"]),
  }
  print("median ms: " + json.dumps({k: round(v, 1) for k, v in med.items()}))
  print("derived:   " + json.dumps({k: round(v, 3) for k, v in derived.items()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
