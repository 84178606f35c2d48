"""README example: a Glow on two moons, composed with TFP, trained with fit, exported, served."""

import tempfile

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfpflows import bijectors
from tfpflows.data import toy_sample
from tfpflows.export import export_saved_model
from tfpflows.models import build_flow

tfb, tfd = tfp.bijectors, tfp.distributions

# 1. A Keras model that owns the weights; Glow steps for vectors (ActNorm, LU 1x1, coupling).
x = toy_sample("moons", 4096, seed=0)
model = build_flow("glow", event_shape=(2,), num_steps=4, hidden=32)
model.initialize(x[:1024])                     # Glow's data-dependent ActNorm initialisation
model.compile(optimizer=keras.optimizers.Adam(2e-3))
data = tf.data.Dataset.from_tensor_slices(x).shuffle(4096).batch(256).repeat()
model.fit(data, steps_per_epoch=300, epochs=1, verbose=2)

# 2. The trained flow is plain TFP: a TransformedDistribution that composes with anything.
flow = model.distribution()
joint = tfd.JointDistributionNamed(dict(
    x=flow, y=lambda x: tfd.Normal(tf.reduce_sum(x, -1), 0.1)))
print("joint log-prob:", joint.log_prob(joint.sample(3, seed=(1, 2))).numpy())
# ...and its bijector chains with TFP's own bijectors, e.g. a MAF on top:
maf = tfb.MaskedAutoregressiveFlow(tfb.AutoregressiveNetwork(params=2, hidden_units=[16]))
stacked = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0., 1.), [2]),
                                      tfb.Chain([model.bijector(), maf]))
print("stacked log-prob:", stacked.log_prob(x[:3]).numpy())

# 3. The pure bijectors take any callable as conditioner.
coupling = bijectors.Coupling(lambda x_a: tf.concat([tf.sin(x_a), tf.cos(x_a)], -1),
                              transform="affine", event_ndims=1)
print("coupling round trip:", coupling.inverse(tf.identity(coupling.forward(x[:2]))).numpy())

# 4. Export a SavedModel; serving needs TensorFlow only (no tfpflows, no TFP).
export_dir = tempfile.mkdtemp() + "/moons_glow"
export_saved_model(model, export_dir)
served = tf.saved_model.load(export_dir)
print("served log-prob:", served.log_prob(x[:3]).numpy())
print("served samples at T=0.8:", served.sample(tf.constant(4), tf.constant(0.8)).shape)
