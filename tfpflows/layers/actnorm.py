"""Keras layer for ActNorm, with explicit, distribution-aware data-dependent init."""

import keras
import tensorflow as tf

from tfpflows import bijectors
from tfpflows.layers.base import BijectorLayer


def _global_moments(y, axes):
  """Per-channel mean and variance over `axes`, over the global batch.

  In a replica context of a `tf.distribute` strategy with several replicas, the sums are
  all-reduced, so every replica gets the statistics of the global batch.
  """
  ctx = tf.distribute.get_replica_context()
  distributed = ctx is not None and ctx.num_replicas_in_sync > 1
  count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(y), axes)), y.dtype)
  total = tf.reduce_sum(y, axis=axes)
  if distributed:
    total, count = ctx.all_reduce("sum", [total, count])
  mean = total / count
  sq = tf.reduce_sum(tf.square(y - mean), axis=axes)
  if distributed:
    sq = ctx.all_reduce("sum", sq)
  return mean, sq / count


class ActNormLayer(BijectorLayer):
  """Owns ActNorm's `loc`, `log_scale` and an `initialized` flag; builds `bijectors.ActNorm`.

  `data_init(y)` sets `loc = mean(y)`, `log_scale = log std(y)` per channel (over the global
  batch under a distribution strategy), so the inverse whitens `y`, and sets `initialized`.
  The flag is a non-trainable weight, saved and restored with the others: a reloaded model
  is not initialised again. Initialisation is an explicit step (`FlowModel.initialize`),
  never a hidden `tf.cond` at the first call.

  Args:
    channels: `C`, the size of the last axis.
    event_ndims: 1 for vectors, 3 for images.
  """

  def __init__(self, channels, *, event_ndims=1, **kwargs):
    super().__init__(**kwargs)
    self.channels = int(channels)
    self.event_ndims = event_ndims
    # ONLY_FIRST_REPLICA: data_init assigns inside strategy.run; every replica computes the
    # same global statistics, and the first replica's value is written to all copies.
    self.loc = self.add_weight(shape=(self.channels,), initializer="zeros", name="loc",
                               aggregation="only_first_replica")
    self.log_scale = self.add_weight(shape=(self.channels,), initializer="zeros",
                                     name="log_scale", aggregation="only_first_replica")
    self.initialized = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                       trainable=False, name="initialized",
                                       aggregation="only_first_replica")

  def bijector(self, training=False):
    del training
    return bijectors.ActNorm(tf.convert_to_tensor(self.loc), tf.convert_to_tensor(self.log_scale),
                             event_ndims=self.event_ndims, name=self.name)

  def data_init(self, y, *, epsilon=1e-6):
    axes = list(range(len(y.shape) - 1))
    mean, var = _global_moments(y, axes)
    self.loc.assign(mean)
    self.log_scale.assign(0.5 * tf.math.log(var + epsilon))
    self.initialized.assign(1)
    return self.bijector().inverse(y)
