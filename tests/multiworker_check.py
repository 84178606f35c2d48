"""Run as a script: one worker of a 2-worker MultiWorkerMirroredStrategy on loopback, or
(`single`) the same training on one device. Prints one JSON line."""

import json
import os
import sys

if sys.argv[1] != "single":
  index, ports = int(sys.argv[1]), sys.argv[2].split(",")
  os.environ["TF_CONFIG"] = json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
      "task": {"type": "worker", "index": index}})

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tfpflows.models import build_flow  # pylint: disable=g-import-not-at-top


def main():
  strategy = (tf.distribute.get_strategy() if sys.argv[1] == "single"
              else tf.distribute.MultiWorkerMirroredStrategy())
  rng = np.random.RandomState(0)
  data = (rng.randn(64, 4) * [1., 2., .5, 3.] + [1., -2., 0., 4.]).astype("float32")
  with strategy.scope():
    keras.utils.set_random_seed(0)
    model = build_flow("glow", (4,), num_steps=2, hidden=8)
  model.initialize(data[:32])
  with strategy.scope():
    model.compile(optimizer=keras.optimizers.SGD(1e-2))
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  ds = tf.data.Dataset.from_tensor_slices(data).batch(16).with_options(options)
  history = model.fit(ds, epochs=2, verbose=0)
  print("RESULT " + json.dumps(dict(
      loss=[float(np.ravel(v)[0]) for v in history.history["loss"]],
      weights=[w.ravel().tolist() for w in model.get_weights()])))


if __name__ == "__main__":
  main()
