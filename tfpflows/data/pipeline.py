"""Input pipelines: single examples in, float32 batches of `x` out (no labels).

uint8 images are uniformly dequantized on the grid of `n_bits` bits per channel (Glow,
Kingma & Dhariwal 2018, uses 5 bits for CelebA-HQ):

    s = 2**(8 - n_bits),  q' = floor(q / s) in [0, 2**n_bits),  x = (q' + u) s,  u ~ U[0, 1)^D,

so `x` lies in `[0, 256)` for every `n_bits` (`n_bits = 8`: `x = q + u`) and a flow's
log-density there is a proper continuous density in the units of 256 levels; the discrete
log-likelihood of `q'` is bounded below by it plus `D (8 - n_bits) log 2` (Theis, van den
Oord, Bethge, "A note on the evaluation of generative models", ICLR 2016). In bits per
dimension: `bpd_n = bpd_256 - (8 - n_bits)` (`n_bit_bits_per_dim`). The noise is drawn by
stateless ops from `(seed, batch index)`: training batches get fresh noise at every step,
held-out batches the same noise at every evaluation.

The training stream is a pure function of the step. Epoch `e` visits the examples in an
order fixed by `(seed, e)` alone; the stream is epoch 0, 1, 2, ... concatenated and cut into
batches, batch `i` being stream elements `[i B, (i + 1) B)`. `train_batches(...,
start_step=s)` therefore yields exactly the batches `s, s + 1, ...` that a stream started at
0 yields after `s` batches, noise included: a resumed run sees what the uninterrupted run
would have seen, and no iterator shares state with another.
"""

import numbers

import tensorflow as tf

SHUFFLE_BUFFER = 10_000


def check_n_bits(n_bits):
  """`n_bits` as an int if it is an integer in 1..8, else a one-line ValueError."""
  if isinstance(n_bits, numbers.Integral) and not isinstance(n_bits, bool) and 1 <= n_bits <= 8:
    return int(n_bits)
  raise ValueError(f"n_bits must be an integer in 1..8 (bits per colour channel); "
                   f"got {n_bits!r}")


def n_bit_bits_per_dim(bpd_256, n_bits):
  """`bpd_256 - (8 - n_bits)`: bits/dim of a density on `[0, 256)^D` on the n-bit scale.

  A density `p` of `x` in `[0, 256)^D` (the models' `log_prob`, 256-unit bits/dim
  `bpd_256 = -log2 p(x) / D`) is, on the n-bit scale `y = x / 2**(8 - n_bits)` in
  `[0, 2**n_bits)^D`, `p(x) 2**(D (8 - n_bits))`.
  """
  return bpd_256 - (8 - check_n_bits(n_bits))


def dequantize(images, *, seed, n_bits=8):
  """`q -> (floor(q / s) + u) s`, `s = 2**(8 - n_bits)`, `u ~ U[0, 1)`: float32 of `images`'
  shape, in `[0, 256)` for uint8 input (`n_bits = 8`: `q + u`).

  Every `x` stays in its level's bin `[q' s, (q' + 1) s)`: a float32 sum that rounds up to
  the bin's end (u within 2**-17 of 1) is replaced by the float below it.

  Args:
    images: uint8 (or integer-valued float) tensor of any shape.
    seed: `[2]` integer tensor for `tf.random.stateless_uniform`.
    n_bits: int in 1..8, bits per channel kept.
  """
  step = 2.0 ** (8 - check_n_bits(n_bits))
  x = tf.cast(images, tf.float32)
  level = tf.floor(x / step) if step != 1.0 else x
  u = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=tf.float32)
  x = (level + u) * step
  return tf.minimum(x, tf.math.nextafter((level + 1.0) * step, tf.zeros_like(x)))


def _finish(batches, seed, start=0, n_bits=8):
  """Dequantizes uint8 batch `i` with seed `(seed, start + i)`, else casts to float32."""
  n_bits = check_n_bits(n_bits)
  if batches.element_spec.dtype == tf.uint8:
    seed = tf.constant(seed, tf.int64)
    return batches.enumerate(start=start).map(
        lambda i, q: dequantize(q, seed=tf.stack([seed, i]), n_bits=n_bits),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if n_bits != 8:
    raise ValueError(f"n_bits applies to uint8 images only; these examples are "
                     f"{batches.element_spec.dtype.name}: expected n_bits=8, got {n_bits}")
  return batches.map(lambda x: tf.cast(x, tf.float32))


def count_examples(examples):
  """The number of elements of a finite dataset (its cardinality, else one counting pass)."""
  n = int(examples.cardinality())
  if n >= 0:
    return n
  if n == tf.data.INFINITE_CARDINALITY:
    raise ValueError("train_batches needs a finite dataset of examples; got an infinite one")
  return int(examples.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def train_batches(examples, *, batch_size, seed=0, start_step=0, num_examples=None,
                  shuffle_buffer=SHUFFLE_BUFFER, n_bits=8):
  """Batches `start_step, start_step + 1, ...` of the endless shuffled stream: infinite.

  Each epoch cuts `examples` into blocks of `shuffle_buffer` and permutes each block by a
  stateless permutation of `(seed, epoch, block)`: a uniform permutation of the epoch when
  there are at most `shuffle_buffer` examples, else a local shuffle of the kind a shuffle
  buffer of that size gives. The epochs follow each other without a gap,
  batches of `batch_size` are cut from that stream (an epoch's remainder starts the next
  batch), uint8 images are dequantized with the noise of `(seed, batch index)`.

  Args:
    examples: finite `tf.data.Dataset` of single examples, uint8 images or float vectors,
      in a fixed order.
    batch_size: examples per batch.
    seed: int; fixes the order of every epoch and the dequantization noise.
    start_step: index of the first batch yielded.
    num_examples: the size of `examples`, if known (else counted once).
    n_bits: bits per channel kept by the dequantization of uint8 images (`dequantize`);
      must be 8 for float examples.
  """
  if batch_size < 1 or start_step < 0:
    raise ValueError(f"train_batches: batch_size must be >= 1 and start_step >= 0; got "
                     f"{batch_size} and {start_step}")
  n_bits = check_n_bits(n_bits)
  n = num_examples if num_examples is not None else count_examples(examples)
  if n < 1:
    raise ValueError("train_batches: the dataset has no examples")
  first_epoch, offset = divmod(int(start_step) * int(batch_size), n)
  base_seed = tf.constant(seed, tf.int64)

  def epoch(e):
    def permuted(block_index, block):
      block_seed = tf.random.experimental.stateless_fold_in(tf.stack([base_seed, e]),
                                                            block_index)
      keys = tf.random.stateless_uniform(tf.shape(block)[:1], seed=block_seed)
      return tf.data.Dataset.from_tensor_slices(tf.gather(block, tf.argsort(keys)))
    return examples.batch(min(n, shuffle_buffer)).enumerate().flat_map(permuted)

  stream = tf.data.Dataset.counter(first_epoch, dtype=tf.int64).flat_map(epoch).skip(offset)
  batches = stream.batch(batch_size, drop_remainder=True)
  return _finish(batches, seed, start_step, n_bits).prefetch(tf.data.AUTOTUNE)


def eval_batches(examples, *, batch_size, seed=0, n_bits=8):
  """Batch (keeping the remainder), dequantize with fixed noise (`n_bits` as in
  `dequantize`), prefetch: one pass, the uint8 batches cached in memory."""
  batches = examples.batch(batch_size).cache()
  return _finish(batches, seed, 0, n_bits).prefetch(tf.data.AUTOTUNE)
