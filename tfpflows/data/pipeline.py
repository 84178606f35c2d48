"""Input pipelines: single examples in, float32 batches of `x` out (no labels).

uint8 images are uniformly dequantized, `x = q + u` with `u ~ U[0, 1)^D`, so batches lie in
`[0, 256)` and a flow's log-density there is a proper continuous density; the discrete
log-likelihood of `q` is bounded below by it (Theis, van den Oord, Bethge, "A note on the
evaluation of generative models", ICLR 2016). The noise is drawn by stateless ops from
`(seed, batch index)`: training batches get fresh noise at every step, held-out batches the
same noise at every evaluation.
"""

import tensorflow as tf

SHUFFLE_BUFFER = 10_000


def dequantize(images, *, seed):
  """`q -> q + u`, `u ~ U[0, 1)`: float32 of `images`' shape, in `[0, 256)` for uint8 input.

  Args:
    images: uint8 (or integer-valued float) tensor of any shape.
    seed: `[2]` integer tensor for `tf.random.stateless_uniform`.
  """
  x = tf.cast(images, tf.float32)
  return x + tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=tf.float32)


def _finish(batches, seed):
  """Dequantizes uint8 batches with seed `(seed, index)`, else casts to float32."""
  if batches.element_spec.dtype == tf.uint8:
    seed = tf.constant(seed, tf.int64)
    return batches.enumerate().map(
        lambda i, q: dequantize(q, seed=tf.stack([seed, i])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return batches.map(lambda x: tf.cast(x, tf.float32))


def train_batches(examples, *, batch_size, seed=0, shuffle_buffer=SHUFFLE_BUFFER):
  """Shuffle, repeat, batch (dropping the remainder), dequantize, prefetch: infinite.

  Args:
    examples: `tf.data.Dataset` of single examples, uint8 images or float vectors.
    batch_size: examples per batch.
    seed: int; fixes the shuffle order and the dequantization noise.
  """
  batches = (examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
             .repeat().batch(batch_size, drop_remainder=True))
  return _finish(batches, seed).prefetch(tf.data.AUTOTUNE)


def eval_batches(examples, *, batch_size, seed=0):
  """Batch (keeping the remainder), dequantize with fixed noise, prefetch: one pass."""
  batches = examples.batch(batch_size).cache()
  return _finish(batches, seed).prefetch(tf.data.AUTOTUNE)
