"""Stateless seeds from a Keras `SeedGenerator`, distinct on every replica of a strategy."""

import tensorflow as tf
from tensorflow_probability.python.internal import samplers

__all__ = ["next_seed"]


def next_seed(generator):
  """The next `[2]` int32 seed of `generator`; under a distribution strategy with several
  replicas, folded with the replica's id, so that replicas draw independent noise for
  their parts of the global batch (the same seed on every replica would repeat one
  replica's draws on the others)."""
  seed = tf.cast(generator.next(), tf.int32)
  ctx = tf.distribute.get_replica_context()
  if ctx is not None and ctx.num_replicas_in_sync > 1:
    seed = samplers.fold_in(seed, tf.cast(ctx.replica_id_in_sync_group, tf.int32))
  return seed
