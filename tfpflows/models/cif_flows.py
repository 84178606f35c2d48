"""CIF-ResFlow, CIF-RealNVP and CIF-Glow built from the layers, for vectors `[D]` and images
`[H, W, C]`."""

from tfpflows import layers as L
from tfpflows.bijectors.logdet import LogDetEstimator
from tfpflows.layers import lipschitz
from tfpflows.layers.cif import CIFLayer
from tfpflows.layers.cif_multiscale import CIFChain, CIFFactorOut, FixedStage
from tfpflows.layers.residual import ResidualLayer
from tfpflows.models import residual_flows
from tfpflows.models.cif_model import CIFModel

NAMES = ("cif-resflow", "cif-realnvp", "cif-glow")

# name: (num_steps, hidden) for vectors. cif-resflow is the reference code's 2D setting
# (config/two_d.py: 10 layers, Lipschitz MLPs of 4 hidden layers of 128, c = 0.9).
DEFAULTS = {"cif-resflow": (10, 128), "cif-realnvp": (4, 32), "cif-glow": (4, 32)}
RESFLOW_HIDDEN_LAYERS = 4
RESFLOW_COEFF = 0.9
# The reference's s/t, p(u|z) and q(u|h) networks for 2D data: two hidden layers of 10.
CIF_HIDDEN = (10, 10)

# name: (num_levels, num_steps per level, hidden) for images, after the reference code's
# config/images.py, scaled down where noted:
# * cif-resflow: "resflow-small", 3 scales of 4 residual blocks of 128 channels (its 4
#   fully connected output blocks are left out);
# * cif-realnvp: 3 scales of 4 couplings (checkerboard, checkerboard, channel, channel) with
#   conditioners of 64 channels (the reference's [64] x 4 convolutions);
# * cif-glow: 2 scales as the reference's, of 8 steps of 128 channels (it has 32 of 256,
#   far beyond a CPU).
IMAGE_DEFAULTS = {"cif-resflow": (3, 4, 128), "cif-realnvp": (3, 4, 64),
                  "cif-glow": (2, 8, 128)}
# The reference's s/t, p(u|z) and q(u|h) networks for images: two 3x3 convolutions of 32.
IMAGE_CIF_HIDDEN = (32, 32)


def _base_layer(name, k, d, *, hidden, seed):
  """The base map `f` of CIF layer `k`: ActNorm and one step of the base family."""
  steps = [L.ActNormLayer(d, event_ndims=1)]
  if name == "cif-resflow":
    net = lipschitz.lipschitz_mlp(d, (hidden,) * RESFLOW_HIDDEN_LAYERS, activation="lipswish",
                                  coeff=RESFLOW_COEFF, n_iterations=5)
    steps.append(ResidualLayer(net, (d,), train_logdet=LogDetEstimator.resflow(), seed=seed))
  else:
    if name == "cif-glow":
      steps.append(L.Conv1x1Layer(d, kind="lu", event_ndims=1, seed=seed))
    steps.append(L.CouplingLayer(d, mask="channel", transform="affine",
                                 reverse=(name == "cif-realnvp" and k % 2 == 1),
                                 event_ndims=1, hidden=hidden))
  return L.ChainLayer(steps)


def _image_base_layer(name, k, shape, *, hidden, seed, first):
  """The base map `f` of CIF layer `k` of a level, on images of `shape` (data side first)."""
  c = shape[-1]
  if name == "cif-resflow":
    block = residual_flows._block  # pylint: disable=protected-access
    return L.ChainLayer(block("resflow", shape, hidden=hidden, seed=seed, first=first))
  steps = [L.ActNormLayer(c, event_ndims=3)]
  if name == "cif-glow":
    steps += [L.Conv1x1Layer(c, kind="lu", event_ndims=3, seed=seed),
              L.CouplingLayer(c, mask="channel", transform="affine", event_ndims=3,
                              hidden=hidden)]
  else:   # RealNVP's image pattern: two checkerboard couplings, then two channel ones
    mask = "checkerboard" if (k // 2) % 2 == 0 else "channel"
    steps.append(L.CouplingLayer(c, mask=mask, reverse=bool(k % 2), transform="affine",
                                 event_ndims=3, hidden=hidden))
  return L.ChainLayer(steps)


def _image_level(name, level, num_levels, shape, *, num_steps, hidden, seed, u_dim,
                 cif_hidden):
  """Squeeze, `num_steps` CIF layers, factor out half (all but the last level), unsqueeze."""
  h, w, c = shape
  shape = (h // 2, w // 2, 4 * c)
  stages = [FixedStage(L.SqueezeLayer(), name=f"squeeze_{level}")]
  for k in range(num_steps):
    layer_seed = seed + 1000 * level + k
    base = _image_base_layer(name, k, shape, hidden=hidden, seed=layer_seed,
                             first=(level == 0 and k == 0))
    stages.append(CIFLayer(base, shape, u_dim=u_dim, hidden=cif_hidden,
                           seed=seed + 7 * (1000 * level + k) + 1, name=f"cif_{level}_{k}"))
  if level < num_levels - 1:
    inner = _image_level(name, level + 1, num_levels, shape[:2] + (shape[2] // 2,),
                         num_steps=num_steps, hidden=hidden, seed=seed, u_dim=u_dim,
                         cif_hidden=cif_hidden)
    stages.append(CIFFactorOut(inner, shape[2], name=f"factor_out_{level}"))
  stages.append(FixedStage(L.SqueezeLayer(unsqueeze=True), name=f"unsqueeze_{level}"))
  return CIFChain(stages, name=f"level_{level}")


def cif_flow(name, event_shape, *, num_steps, hidden, seed, u_dim, cif_hidden, spec,
             default_num_samples=None, num_levels=None):
  """A `CIFModel` (see `build_flow`): `num_steps` CIF layers on vectors; on images the
  multi-scale architecture of `num_levels` levels of `num_steps` CIF layers each."""
  if len(event_shape) == 3:
    root = _image_level(name, 0, num_levels, tuple(event_shape), num_steps=num_steps,
                        hidden=hidden, seed=seed, u_dim=u_dim, cif_hidden=cif_hidden)
    return CIFModel([root], tuple(event_shape), spec=spec, image=True,
                    default_num_samples=default_num_samples, name=name.replace("-", "_"))
  (d,) = event_shape
  cif_layers = [CIFLayer(_base_layer(name, k, d, hidden=hidden, seed=seed + k), (d,),
                         u_dim=u_dim, hidden=cif_hidden, seed=seed + 7 * k + 1,
                         name=f"cif_{k}")
                for k in range(num_steps)]
  return CIFModel(cif_layers, (d,), spec=spec, default_num_samples=default_num_samples,
                  name=name.replace("-", "_"))
