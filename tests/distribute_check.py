"""Run as a script (a fresh process): MirroredStrategy on two logical CPUs vs one device.

Prints one JSON line. Logical devices must be configured before TensorFlow runs any op,
hence the separate process.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top

from tfpflows.bijectors import LogDetEstimator  # pylint: disable=g-import-not-at-top
from tfpflows.layers.residual import ResidualLayer  # pylint: disable=g-import-not-at-top
from tfpflows.models import build_flow  # pylint: disable=g-import-not-at-top

tfd = tfp.distributions


def _deterministic_index(model):
  """CIF layers with `u` = the mean of `q(u | h)` (log q = 0): the index networks, the
  indexed maps and `p(u | z)` still run, with no random draw that depends on the split."""
  for layer in model.cif_layers:
    def q_u(h, layer=layer):
      mean, _ = tf.split(tf.cast(layer.q_net(h), h.dtype), 2, axis=-1)
      return tfd.Independent(tfd.Deterministic(mean), reinterpreted_batch_ndims=1)
    layer.q_u = q_u


def main(kind):
  rng = np.random.RandomState(0)
  if kind == "cif":
    spec = dict(name="cif-realnvp", event_shape=(4,), num_steps=2, hidden=16)
    data = (rng.randn(64, 4) * [1., 2., .5, 3.] + [1., -2., 0., 4.]).astype("float32")
  elif kind in ("vec", "resflow"):
    name = "glow" if kind == "vec" else "resflow"
    spec = dict(name=name, event_shape=(4,), num_steps=2, hidden=16)
    data = (rng.randn(64, 4) * [1., 2., .5, 3.] + [1., -2., 0., 4.]).astype("float32")
  else:
    spec = dict(name="glow", event_shape=(8, 8, 1), num_levels=2, num_steps=1, hidden=8)
    data = (rng.randint(0, 256, (64, 8, 8, 1)) + rng.rand(64, 8, 8, 1)).astype("float32")
  batch = 16
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

  keras.utils.set_random_seed(0)
  single = build_flow(**spec)
  with strategy.scope():
    keras.utils.set_random_seed(0)
    mirrored = build_flow(**spec)
  if kind == "resflow":
    # The same result as one device needs the same log-det: the exact one (a stochastic
    # estimate draws its probes per replica). The spectral-norm power iteration, the
    # seed stream and the Neumann path still run under the strategy in `stochastic_loss`.
    for model in (single, mirrored):
      for layer in model._flatten_layers(recursive=True):
        if isinstance(layer, ResidualLayer):
          layer.train_logdet = LogDetEstimator.exact()
  if kind == "cif":
    _deterministic_index(single)
    _deterministic_index(mirrored)
  single.initialize(data[:batch])
  first = next(iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(data[:batch]).batch(batch))))
  mirrored.initialize(first)          # per-replica halves, global statistics
  init_diff = max(float(np.max(np.abs(a - b)))
                  for a, b in zip(single.get_weights(), mirrored.get_weights()))

  ds = tf.data.Dataset.from_tensor_slices(data).batch(batch)
  single.compile(optimizer=keras.optimizers.SGD(1e-2))
  hist1 = single.fit(ds, epochs=2, verbose=0, shuffle=False)
  with strategy.scope():
    mirrored.compile(optimizer=keras.optimizers.SGD(1e-2))
  hist2 = mirrored.fit(ds, epochs=2, verbose=0, shuffle=False)
  weight_diff = max(float(np.max(np.abs(a - b)))
                    for a, b in zip(single.get_weights(), mirrored.get_weights()))
  moved = max(float(np.max(np.abs(a))) for a in single.get_weights())
  stochastic_loss = None
  if kind == "resflow":
    for layer in mirrored._flatten_layers(recursive=True):
      if isinstance(layer, ResidualLayer):
        layer.train_logdet = LogDetEstimator.resflow()
    with strategy.scope():
      mirrored.compile(optimizer=keras.optimizers.Adam(1e-3))
    stochastic_loss = mirrored.fit(ds, epochs=1, verbose=0, shuffle=False).history["loss"]
  replica_draws_differ = None
  if kind == "cif":   # the real q: draws per replica, training under the strategy
    del mirrored
    with strategy.scope():
      keras.utils.set_random_seed(0)
      mirrored = build_flow(**spec)
      mirrored.initialize(first)
      mirrored.compile(optimizer=keras.optimizers.Adam(1e-3))
    stochastic_loss = mirrored.fit(ds, epochs=1, verbose=0, shuffle=False).history["loss"]
    same_x = tf.constant(data[:4])
    layer = mirrored.cif_layers[0]
    draws = strategy.run(
        tf.function(lambda: layer.infer(same_x, seed=layer.next_seed(True))[1]))
    a, b = (v.numpy() for v in strategy.experimental_local_results(draws))
    replica_draws_differ = bool(np.all(a != b))
  print("RESULT " + json.dumps(dict(
      replica_draws_differ=replica_draws_differ,
      replicas=strategy.num_replicas_in_sync, init_diff=init_diff, weight_diff=weight_diff,
      moved=moved, loss_single=hist1.history["loss"], loss_mirrored=hist2.history["loss"],
      stochastic_loss=stochastic_loss)))


if __name__ == "__main__":
  main(sys.argv[1])
