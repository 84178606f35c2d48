"""Shape helpers shared by the image bijectors (internal)."""

import tensorflow as tf


def event_size_but_last(x, event_ndims):
  """Number of positions sharing one channel vector: prod(event_shape[:-1]) as x.dtype."""
  if event_ndims <= 1:
    return tf.ones([], x.dtype)
  static = x.shape[-event_ndims:-1]
  if static.is_fully_defined():
    return tf.constant(float(static.num_elements()), x.dtype)
  return tf.cast(tf.reduce_prod(tf.shape(x)[-event_ndims:-1]), x.dtype)


def flatten_batch(x, event_ndims):
  """Reshapes [*batch, *event] to [prod(batch), *event]; returns (flat, batch_shape)."""
  shape = tf.shape(x)
  batch_shape = shape[:tf.rank(x) - event_ndims]
  event_shape = x.shape[-event_ndims:]
  if event_shape.is_fully_defined():
    new_shape = [-1] + event_shape.as_list()
  else:
    new_shape = tf.concat([[-1], shape[-event_ndims:]], axis=0)
  return tf.reshape(x, new_shape), batch_shape


def unflatten_batch(x, batch_shape, event_ndims):
  """Inverse of `flatten_batch` (the event part may have changed)."""
  return tf.reshape(x, tf.concat([batch_shape, tf.shape(x)[1:1 + event_ndims]], axis=0))


def call_on_events(fn, x, event_ndims):
  """`fn` on `x` with the batch dimensions flattened to one (rank-4 images, rank-2 vectors).

  The output is cast back to `x.dtype` (a network may compute in a mixed-precision dtype)
  and given `x`'s batch shape again.
  """
  flat, batch_shape = flatten_batch(x, event_ndims)
  return unflatten_batch(tf.cast(fn(flat), x.dtype), batch_shape, event_ndims)


def sum_event(t, event_ndims):
  """Sums the last `event_ndims` axes."""
  return tf.reduce_sum(t, axis=tf.range(-event_ndims, 0))


def channel_matmul(x, w):
  """y[..., i] = sum_j w[i, j] x[..., j], one matmul over all positions."""
  c = tf.shape(x)[-1]
  y = tf.matmul(tf.reshape(x, [-1, c]), w, transpose_b=True)
  return tf.reshape(y, tf.shape(x))


def validate_event_ndims(event_ndims, name):
  if event_ndims not in (1, 3):
    raise ValueError(f"{name}: event_ndims must be 1 (vectors [D]) or 3 (images [H, W, C]), "
                     f"got {event_ndims!r}")
  return event_ndims
