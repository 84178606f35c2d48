"""Export a trained `FlowModel` as a TensorFlow SavedModel for serving.

The SavedModel holds only TensorFlow graphs and variables: `tf.saved_model.load(path)`
serves it without tfpflows, Keras or TFP installed. Signatures:

* `log_prob(x) -> [batch]` float32, in the units of the training data (for 8-bit images,
  pixel values as floats in `[0, 256)`, so bits/dim `= -log_prob / (D ln 2)`).
  `serving_default` is `log_prob`.
* `sample(n, temperature) -> [n, *event_shape]`: temperature scales the base standard
  deviation as in Glow (1.0 is the model itself). Each call draws afresh from a
  `tf.random.Generator` saved with the model; its seed is `export_saved_model`'s `seed`.
* `encode(x) -> latent` (the inverse of the flow) and `decode(z) -> data` (the forward).

The weights are listed as `loaded.variables`, `loaded.trainable_variables` and
`loaded.non_trainable_variables`.

A `CIFModel` (continuously indexed flow) has no exact density; its SavedModel serves:

* `log_prob(x) -> [batch]`: the importance-sampled estimate with the model's
  `default_num_samples` `K` (100 for vectors, 10 for images), so a server calls every
  model the same way; `serving_default` is `log_prob`.
* `log_prob_k(x, num_samples) -> [batch]`: the same with `K` given (a graph assertion
  refuses `K < 1`). The default `K` is saved too: `loaded.default_num_samples`, an int32
  variable that `log_prob` reads at each call.
* `elbo(x) -> [batch]`: one draw of `log p(x, u) - log q(u | x)`.
* `sample(n, temperature)` as above (exact ancestral samples).
* `encode(x) -> z_L` with one draw `u ~ q(u | x)` per layer, and `decode(z) -> data` with
  one draw `u ~ p(u | z)` per layer: not inverses of each other (the indices are drawn
  afresh), but `decode` of `N(0, I)` draws is an exact sample.

Every random draw comes from the saved `tf.random.Generator`: each call draws afresh.
"""

import errno
import os
import shutil
import tempfile

import tensorflow as tf

from tfpflows.checkpoint import NonFiniteError, all_finite
from tfpflows.layers.base import tf_variable

__all__ = ["export_saved_model", "sweep_stale_exports"]


def _alive(pid):
  try:
    os.kill(pid, 0)
  except OSError as e:
    return e.errno == errno.EPERM
  return True


def _tmp_prefix(export_dir):
  """Name prefix of the temporary folders of an export to `export_dir` (an absolute path)."""
  return f".{os.path.basename(export_dir)}.tmp-export-"


def sweep_stale_exports(export_dir):
  """Removes the temporary folders that dead processes left beside `export_dir`.

  Returns the paths removed. Folders of running processes (a concurrent export) stay.
  """
  export_dir = os.path.abspath(os.fspath(export_dir))
  parent, prefix = os.path.dirname(export_dir), _tmp_prefix(export_dir)
  removed = []
  if not os.path.isdir(parent):
    return removed
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    pid = entry[len(prefix):].split("-", 1)[0]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
      removed.append(os.path.join(parent, entry))
  return removed


def _is_cif(model):
  from tfpflows.models.cif_model import CIFModel  # pylint: disable=g-import-not-at-top
  return isinstance(model, CIFModel)


def export_saved_model(model, export_dir, *, overwrite=False, seed=0):
  """Writes `model` as a SavedModel at `export_dir`, atomically.

  The model is written to a temporary directory beside `export_dir` and renamed into
  place only when complete: a failure leaves nothing half-written, and with
  `overwrite=True` the old export is replaced only after the new one is whole.

  Args:
    model: a `tfpflows.models.FlowModel` or `CIFModel`.
    export_dir: the SavedModel directory to create.
    overwrite: replace an existing `export_dir`.
    seed: seed of the sampler's random generator.

  Temporary folders are named `.<name>.tmp-export-<pid>-*` beside `export_dir`; those of
  processes that no longer run (a SIGKILL during an earlier export) are removed first.

  Raises:
    FileExistsError: `export_dir` exists and `overwrite` is False.
    checkpoint.NonFiniteError: (a ValueError) some weight is NaN or infinite; nothing is
      written.
  """
  export_dir = os.path.abspath(os.fspath(export_dir))
  if os.path.exists(export_dir) and not overwrite:
    raise FileExistsError(f"export directory {export_dir} already exists "
                          f"(pass overwrite=True / --overwrite to replace it)")
  if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise FileExistsError(f"export path {export_dir} is a file, not a SavedModel directory")
  if not all_finite(model.variables):
    raise NonFiniteError("the model's weights are not finite (NaN or Inf); not exporting")
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  prefix = _tmp_prefix(export_dir)
  sweep_stale_exports(export_dir)
  event_spec = tf.TensorSpec([None, *model.event_shape], tf.float32)
  latent_spec = tf.TensorSpec([None, *model.latent_shape], tf.float32)

  # A plain trackable holding the weights, the generator and one `tf.function` per
  # signature, saved by `tf.saved_model.save`, which traces each once, inside its save
  # context. (Keras' `ExportArchive` traces every endpoint twice: once outside that context
  # to list the variables, once inside, since the save context is part of TF's trace key;
  # for a residual or CIF model that doubled the export's time.)
  module = tf.__internal__.tracking.AutoTrackable()
  # The weights, listed as Keras' ExportArchive listed them: `loaded.variables`,
  # `loaded.trainable_variables`, `loaded.non_trainable_variables`.
  module.variables = [tf_variable(v) for v in model.variables]
  module.trainable_variables = [v for v in module.variables if v.trainable]
  module.non_trainable_variables = [v for v in module.variables if not v.trainable]
  with tf.init_scope():
    generator = tf.random.Generator.from_seed(seed)
  module.generator = generator   # a TF trackable: its state is saved with the model

  def endpoint(name, fn, signature):
    setattr(module, name, tf.function(fn, input_signature=signature, autograph=False))

  def log_prob(x):
    return model.log_prob(x)

  def sample(n, temperature):
    seed_pair = tf.cast(generator.make_seeds(1)[:, 0], tf.int32)
    return model.sample(n, temperature=temperature, seed=seed_pair)

  sample_spec = [tf.TensorSpec([], tf.int32, name="n"),
                 tf.TensorSpec([], tf.float32, name="temperature")]
  if _is_cif(model):
    def draw():
      return tf.cast(generator.make_seeds(1)[:, 0], tf.int32)

    def log_prob_k(x, num_samples):
      return model.log_prob(x, num_samples, seed=draw())

    # `log_prob`'s K, read by it at each call: `loaded.default_num_samples` is the K it uses.
    module.default_num_samples = tf.Variable(int(model.default_num_samples), dtype=tf.int32,
                                             trainable=False, name="default_num_samples")

    def cif_log_prob(x):   # calls log_prob_k's graph: one trace serves both
      return module.log_prob_k(x, module.default_num_samples.read_value())

    names = ["log_prob", "log_prob_k", "elbo", "sample", "encode", "decode"]
    endpoint("log_prob_k", log_prob_k, [event_spec,
                                        tf.TensorSpec([], tf.int32, name="num_samples")])
    endpoint("log_prob", cif_log_prob, [event_spec])
    endpoint("elbo", lambda x: model.elbo(x, seed=draw()), [event_spec])
    endpoint("sample", sample, sample_spec)
    endpoint("encode", lambda x: model.encode(x, seed=draw()), [event_spec])
    endpoint("decode", lambda z: model.decode(z, seed=draw()), [latent_spec])
  else:
    names = ["log_prob", "sample", "encode", "decode"]
    endpoint("log_prob", log_prob, [event_spec])
    endpoint("sample", sample, sample_spec)
    endpoint("encode", model.encode, [event_spec])
    endpoint("decode", model.decode, [latent_spec])
  signatures = {name: getattr(module, name) for name in names}
  signatures["serving_default"] = module.log_prob

  tmp = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
  try:
    path = os.path.join(tmp, "saved_model")
    tf.saved_model.save(module, path, signatures=signatures)
    if os.path.exists(export_dir):
      old = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-old-", dir=parent)
      os.rename(export_dir, os.path.join(old, "x"))
      os.rename(path, export_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(path, export_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return export_dir
