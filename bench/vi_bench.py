"""Variational inference in equal wall-clock time: our flow surrogates vs TFP's own IAF.

Targets (`tfpflows.targets`, 2D, unnormalised with known log Z): `banana`, `funnel` (Neal's,
sigma = 3) and `mixture` (4 well-separated Gaussians on a circle of radius 3, sd 0.5). For
each target, each system and each seed, one process:

1. builds the surrogate (seeded) and one `tf.function(jit_compile=True)` training step:
   `tfp.vi.monte_carlo_variational_loss` (reverse KL, reparameterised, `--sample-size`
   samples, stateless seeds), its gradient and a Keras `Adam(--lr)` update of the
   surrogate's `trainable_variables` (exactly the step `tfp.vi.fit_surrogate_posterior`
   runs). `--gradient-estimator stl` gives every system the sticking-the-landing gradient
   instead (TFP's `DOUBLY_REPARAMETERIZED` with a stopped copy of the surrogate: ours
   `distribution(stop_gradient=True)`, the IAF's a second IAF assigned the trained
   weights at the start of each timed step), whose noise vanishes as `q` nears the target;
2. runs the step once untimed (compilation), then for `--budget` seconds of wall clock
   (`--lr-schedule linear`: the learning rate decays linearly to 0 over that time, for
   both systems alike; the default `constant` is what `fit_surrogate_posterior` runs);
3. estimates `KL(q || p) = log Z - ELBO` from `--eval-samples` fresh samples
   (`tfpflows.vi.elbo`, evaluation setting of our flows: exact log-dets in 2D), with the
   standard error of that estimate.

   With `--avg-points N` (information), also the KL averaged over N points evenly spaced
   in the budget's second half (the last one the final KL above; the clock stops while the
   others are estimated from `--eval-samples / 4` draws): at a constant learning rate the
   final iterate jitters around its optimum, and its KL with it; the average measures
   where each surrogate sits, not where one draw of the jitter left it.

Systems (parameter counts printed):

* `tfp_iaf`: `tfb.Invert(tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork(params=2,
  hidden_units=[h, h])))` x `--iaf-layers`, with `tfb.Permute` between layers, on a
  standard normal base, `h` chosen to match `ours_coupling`'s parameter count.
* `ours_coupling`: `vi.build_surrogate("realnvp", [2], num_steps=4, hidden=32,
  base_components=K)`.
* `ours_residual`: `vi.build_surrogate("resflow", [2], num_steps=4, hidden=32,
  base_components=K)` (training: unbiased Russian-roulette log-det, Neumann gradient).
* `ours_simple`: `vi.build_surrogate("sylvester", [2], num_steps=8, base_components=K)`
  (maps on the sampling side).
* `tfp_iaf_mixbase` (information, mixture target only): the IAF on our learnable mixture
  base, to show how much of our result comes from the base rather than the flow.

Every surrogate starts at scale `--initial-scale` (ours: `initial_scale`; the IAF: a
`tfb.Scale` on its output). `K = --base-components`: `auto` (default) is the choice a user
who knows the target's shape makes, 8 (a learnable mixture) on the multimodal `mixture`
and 1 (the standard normal) on the unimodal `banana` and `funnel`; a number applies to
every target.

Output: per system and target, the mean KL over seeds with its standard error (from the
seeds' spread, and the mean of the per-seed Monte Carlo errors), steps/s, and at the end

    ratio vi_kl_vs_tfp_iaf_<target> VALUE   # TFP IAF's mean KL / our best family's

(targets: >= 1.5 on `mixture`, >= 1.0 on the others). A run whose surrogate goes
non-finite is stopped, printed with KL=inf and counted in the summary, and left out of its
system's means; a system of ours with such a run is not a candidate for the ratio, and a
target where every IAF run failed (or each of ours had a failure) gets no ratio. Run on a quiet machine: systems
alternate seed by seed so that drift hits them alike; `other_cores` is the CPU other jobs
used during each timed run.
"""

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from bench.bench_workers import cpu_probe, foreign_cores  # noqa: E402
from tfpflows import targets, vi  # noqa: E402
from tfpflows.checkpoint import NonFiniteError  # noqa: E402
from tfpflows.layers import GaussianMixtureBase  # noqa: E402

tfb, tfd = tfp.bijectors, tfp.distributions

FAMILIES = {"ours_coupling": ("realnvp", dict(num_steps=4, hidden=32)),
            "ours_residual": ("resflow", dict(num_steps=4, hidden=32)),
            "ours_simple": ("sylvester", dict(num_steps=8))}


def _count(variables):
  return int(sum(np.prod(v.shape) for v in variables))


def iaf(layers, hidden, scale, seed, base=None):
  """TFP's inverse autoregressive flow on [2] (latent -> sample in `forward`)."""
  tf.keras.utils.set_random_seed(seed)   # tf_keras / keras initialisers of the MADEs
  parts = [tfb.Scale(scale)]
  for k in range(layers):
    made = tfb.AutoregressiveNetwork(params=2, hidden_units=[hidden, hidden],
                                     activation="relu")
    parts.append(tfb.Invert(tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=made)))
    if k < layers - 1:
      parts.append(tfb.Permute([1, 0]))
  if base is None:
    base = tfd.Sample(tfd.Normal(0., 1.), [2])
  q = tfd.TransformedDistribution(base, tfb.Chain(parts))
  q.sample(1, seed=(0, 0))   # builds the MADEs' weights
  return q, q, q.trainable_variables


def ours(system, args, seed):
  name, kw = FAMILIES[system]
  model = vi.build_surrogate(name, [2], seed=seed, initial_scale=args.initial_scale,
                             base_components=args.k, **kw)
  return (model.distribution(training=True), model.distribution(),
          model.tf_trainable_variables, model.distribution(training=True, stop_gradient=True),
          ())


def make(system, args, seed):
  """`(q to train, q to evaluate, its variables, stopped copy, [(copy's, q's variable)])`.

  The stopped copy is what STL differentiates `log q` through (samples only): ours is
  `distribution(stop_gradient=True)`; the IAF's is a second IAF of the same shape whose
  variables are assigned the trained ones at the start of every step (in the timed step).
  """
  stl = args.gradient_estimator == "stl"
  if system == "tfp_iaf":
    q, q_eval, variables = iaf(args.iaf_layers, args.iaf_hidden, args.initial_scale, seed)
    stopped, pairs = _stopped_iaf(q, args, seed) if stl else (None, [])
    return q, q_eval, variables, stopped, pairs
  if system == "tfp_iaf_mixbase":
    keras.utils.set_random_seed(seed)
    base_layer = GaussianMixtureBase(2, max(args.k, 2), seed=seed)
    q, _, variables = iaf(args.iaf_layers, args.iaf_hidden, args.initial_scale, seed,
                          base=base_layer.distribution(reparameterize=True))
    q_eval = tfd.TransformedDistribution(base_layer.distribution(), q.bijector)
    stopped, pairs = (_stopped_iaf(q, args, seed, base_layer.distribution(
        reparameterize=True, stop_gradient=True)) if stl else (None, []))
    return q, q_eval, variables, stopped, pairs
  return ours(system, args, seed)


def _stopped_iaf(q, args, seed, base=None):
  """A second IAF of `q`'s shape (on `base`, default the standard normal) and the pairs
  `(its variable, q's flow variable)` that each step assigns."""
  copy, _, _ = iaf(args.iaf_layers, args.iaf_hidden, args.initial_scale, seed)
  stopped = copy if base is None else tfd.TransformedDistribution(base, copy.bijector)
  return stopped, list(zip(copy.bijector.trainable_variables, q.bijector.trainable_variables))


def run(system, target, args, seed):
  q_train, q_eval, variables, stopped, copies = make(system, args, seed)
  estimator = {}
  if args.gradient_estimator == "stl":
    estimator = dict(gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
                     stopped_surrogate_posterior=stopped)
  opt = keras.optimizers.Adam(args.lr)
  opt.build(variables)
  seed_t = tf.Variable(tfp.random.sanitize_seed(seed + 1000))

  decay = args.lr_schedule == "linear"

  @tf.function(jit_compile=True, autograph=False)
  def step(elapsed_fraction):
    if decay:   # lr * (1 - t / budget), t the wall-clock time into the run
      opt.learning_rate.assign(args.lr * tf.maximum(1. - elapsed_fraction, 0.))
    for copy, v in copies:   # the IAF's stopped copy takes the current weights
      copy.assign(v)
    s, nxt = tfp.random.split_seed(seed_t, 2)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
      tape.watch(variables)
      loss = tfp.vi.monte_carlo_variational_loss(
          target.unnormalized_log_prob, q_train, sample_size=args.sample_size, seed=s,
          **estimator)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))
    seed_t.assign(nxt)
    return loss

  t0 = time.perf_counter()
  step(tf.constant(0.))
  compile_s = time.perf_counter() - t0
  probe = cpu_probe(os.getpid())
  # --avg-points: KL at evenly spaced times of the budget's second half, the clock paused
  points = [args.budget * (0.5 + 0.5 * (i + 1) / args.avg_points)
            for i in range(args.avg_points)][:-1]
  path_kls, paused, failed = [], 0., False
  steps, t0 = 0, time.perf_counter()
  while (elapsed := time.perf_counter() - t0 - paused) < args.budget:
    loss = step(tf.constant(elapsed / args.budget, tf.float32))
    steps += 1
    if points and elapsed >= points[0]:
      points.pop(0)
      t_eval = time.perf_counter()
      est = _estimate(target, q_eval, max(args.eval_samples // 4, 2),
                      seed + 3000 + len(path_kls))
      paused += time.perf_counter() - t_eval
      if est is None:   # the surrogate went non-finite: the run has failed, stop it
        failed = True
        break
      path_kls.append(est.kl(target.log_z))
  float(loss)
  elapsed = time.perf_counter() - t0 - paused
  other = foreign_cores(probe, os.getpid())
  est = None if failed else _estimate(target, q_eval, args.eval_samples, seed + 2000)
  if est is None:
    failed, kl, se, log_z = True, math.inf, float("nan"), float("nan")
  else:
    kl, se, log_z = est.kl(target.log_z), est.stderr, est.log_z
  return dict(kl=kl, se=se, failed=failed, steps=steps, steps_s=steps / elapsed,
              compile_s=compile_s, params=_count(variables), other=other,
              log_z_is=log_z,
              avg_kl=float(np.mean(path_kls + [kl])) if args.avg_points else float("nan"))


def _estimate(target, q, n, seed):
  """`vi.elbo` of `q`, or None where its log-densities are non-finite (a diverged run)."""
  try:
    return vi.elbo(target.unnormalized_log_prob, q, num_samples=n, seed=seed)
  except NonFiniteError:
    return None


def base_components(flag, target_name):
  """`--base-components` for one target: `auto` is 8 on the multimodal target, else 1."""
  if flag == "auto":
    return 8 if target_name == "mixture" else 1
  return int(flag)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--targets", default="banana,funnel,mixture")
  p.add_argument("--systems", default="tfp_iaf,ours_coupling,ours_residual,ours_simple")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--budget", type=float, default=20., help="training seconds per run")
  p.add_argument("--sample-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--lr-schedule", choices=("constant", "linear"), default="constant",
                 help="constant (what fit_surrogate_posterior runs) or linear decay to 0 "
                      "over the budget (removes most of the final iterate's noise)")
  p.add_argument("--gradient-estimator", choices=("reparameterized", "stl"),
                 default="reparameterized",
                 help="for every system alike: reparameterized (what fit_surrogate_posterior "
                      "runs) or stl (sticking the landing: TFP's doubly-reparameterised "
                      "estimator with a stopped copy of each surrogate)")
  p.add_argument("--initial-scale", type=float, default=2.)
  p.add_argument("--base-components", default="auto",
                 help="auto: 8 on the multimodal target, 1 on the others; or a number")
  p.add_argument("--iaf-layers", type=int, default=4)
  p.add_argument("--iaf-hidden", type=int, default=0, help="0: match ours_coupling")
  p.add_argument("--eval-samples", type=int, default=20000)
  p.add_argument("--avg-points", type=int, default=0,
                 help="info: also the KL averaged over this many points of the budget's "
                      "second half (the last is the final KL; the clock stops while the "
                      "others, of eval-samples / 4 draws each, are estimated): the "
                      "final iterate's noise averaged out, for the constant rate (with "
                      "--lr-schedule linear it mixes in the earlier, higher-rate "
                      "iterates); 0 (default) skips it")
  p.add_argument("--no-mixbase-info", action="store_true",
                 help="skip tfp_iaf_mixbase on the mixture target")
  p.add_argument("--quick", action="store_true", help="1 seed, 3 s budgets, one target")
  args = p.parse_args(argv)
  if args.quick:
    args.seeds, args.budget, args.targets, args.eval_samples = 1, 3., "mixture", 4000
  systems = args.systems.split(",")
  if args.base_components != "auto" and not (args.base_components.isdigit()
                                            and int(args.base_components) >= 1):
    p.error(f"--base-components: expected 'auto' or a positive integer, got "
            f"{args.base_components!r}")
  if args.avg_points < 0:
    p.error(f"--avg-points: expected an integer >= 0, got {args.avg_points}")
  if args.iaf_hidden == 0:   # the MADE width whose IAF has ours_coupling's parameter count
    name, kw = FAMILIES["ours_coupling"]
    target_count = vi.build_surrogate(name, [2], **kw).count_params()
    counts = {h: _count(iaf(args.iaf_layers, h, 1., 0)[2]) for h in range(8, 129)}
    args.iaf_hidden = min(counts, key=lambda h: abs(counts[h] - target_count))
  print(f"# VI, equal wall clock: budget={args.budget}s/run seeds={args.seeds} "
        f"sample_size={args.sample_size} Adam({args.lr}, {args.lr_schedule}) "
        f"gradient={args.gradient_estimator} "
        f"initial_scale={args.initial_scale} "
        f"base_components={args.base_components} iaf={args.iaf_layers}x[{args.iaf_hidden}, "
        f"{args.iaf_hidden}] eval_samples={args.eval_samples}")
  print(f"# tf={tf.__version__} tfp={tfp.__version__} keras={keras.__version__} "
        f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.2f}", flush=True)
  results = {}
  for tname in args.targets.split(","):
    target = targets.TARGETS[tname]()
    args.k = base_components(args.base_components, tname)
    print(f"# {tname}: base_components={args.k}", flush=True)
    names = systems + (["tfp_iaf_mixbase"] if tname == "mixture" and not args.no_mixbase_info
                       and "tfp_iaf_mixbase" not in systems else [])
    for seed in range(args.seeds):
      for system in names:
        r = run(system, target, args, seed)
        results.setdefault((tname, system), []).append(r)
        print(f"run {tname:8s} {system:16s} seed={seed} KL={r['kl']:.4f} +- {r['se']:.4f} "
              f"steps={r['steps']} steps/s={r['steps_s']:.1f} params={r['params']} "
              f"compile_s={r['compile_s']:.1f} other_cores={r['other']:.2f} "
              f"is_log_z={r['log_z_is']:.3f} (true {target.log_z})"
              + (f" avg_kl={r['avg_kl']:.4f}" if args.avg_points else ""), flush=True)
  print("# summary: KL(q || p) mean over seeds; +- standard error from the seeds' spread; "
        "[mean per-seed Monte Carlo error]")
  ratios, infos = [], []
  for tname in args.targets.split(","):
    summary, errors, avg_summary, failed = {}, {}, {}, {}
    for (t, system), rs in results.items():
      if t != tname:
        continue
      # a run whose surrogate went non-finite is counted and left out of the means; a system
      # of ours with such a run is not a candidate for the ratio, and an IAF whose every
      # run failed gives no ratio
      failed[system] = sum(r["failed"] for r in rs)
      rs = [r for r in rs if not r["failed"]] or rs
      kls = np.array([r["kl"] for r in rs])
      spread = float(np.std(kls, ddof=1) / math.sqrt(len(kls))) if len(kls) > 1 else float("nan")
      summary[system] = float(np.mean(kls))
      errors[system] = max(spread if np.isfinite(spread) else 0.,
                           float(np.mean([r["se"] for r in rs])))
      avg = ""
      if failed[system]:
        avg += f" non-finite runs={failed[system]} (left out of the means)"
      if args.avg_points:
        avgs = np.array([r["avg_kl"] for r in rs])
        avg_summary[system] = float(np.mean(avgs))
        avg += (f" avg_kl={np.mean(avgs):.4f} +- "
               f"{np.std(avgs, ddof=1) / math.sqrt(len(avgs)) if len(avgs) > 1 else 0:.4f}")
      print(f"{tname:8s} {system:16s} KL={np.mean(kls):.4f} +- {spread:.4f} "
            f"[mc {np.mean([r['se'] for r in rs]):.4f}] "
            f"steps/s={np.median([r['steps_s'] for r in rs]):.1f} params={rs[0]['params']}"
            + avg)
    mine = {s: v for s, v in summary.items() if s.startswith("ours") and not failed[s]}
    if "tfp_iaf" in summary and failed["tfp_iaf"] == len(results[(tname, "tfp_iaf")]):
      print(f"warning: {tname}: every tfp_iaf run went non-finite: no ratio")
    elif "tfp_iaf" in summary and not mine:
      print(f"warning: {tname}: each of our systems had a non-finite run: no ratio")
    elif "tfp_iaf" in summary and mine:
      best = min(mine, key=mine.get)
      if mine[best] < 3 * errors[best]:
        print(f"warning: {tname} {best}'s KL {mine[best]:.4f} is within 3 standard errors "
              f"of 0: the ratio below is not resolved")
      fails = ", ".join(f"{k} {v}" for k, v in sorted(failed.items()) if v)
      ratios.append((tname, summary["tfp_iaf"] / max(mine[best], 1e-12),
                     best + (f"; non-finite runs left out: {fails}" if fails else "")))
      for system in sorted(mine):
        infos.append(f"info {tname} tfp_iaf / {system} {summary['tfp_iaf'] / mine[system]:.3f}")
      if avg_summary:
        mine_avg = {s: v for s, v in avg_summary.items() if s in mine}
        best_avg = min(mine_avg, key=mine_avg.get)
        infos.append(f"info {tname} time-averaged KL, tfp_iaf / {best_avg} "
                     f"{avg_summary['tfp_iaf'] / max(mine_avg[best_avg], 1e-12):.3f}   "
                     f"# {args.avg_points} points of the budget's second half")
      if "tfp_iaf_mixbase" in summary:
        infos.append(f"info {tname} tfp_iaf_mixbase / {best} "
                     f"{summary['tfp_iaf_mixbase'] / mine[best]:.3f}   # the same base on both "
                     f"sides: what the flow itself contributes")
  for line in infos:
    print(line)
  for tname, value, best in ratios:
    goal = 1.5 if tname == "mixture" else 1.0
    print(f"ratio vi_kl_vs_tfp_iaf_{tname} {value:.3f}    # ours: {best}; target >= {goal}: "
          f"{'met' if value >= goal else 'NOT met'}")


if __name__ == "__main__":
  main()
