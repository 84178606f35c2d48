"""CIF-ResFlow, CIF-RealNVP and CIF-Glow built from the layers (vectors `[D]`)."""

from tfpflows import layers as L
from tfpflows.bijectors.logdet import LogDetEstimator
from tfpflows.layers import lipschitz
from tfpflows.layers.cif import CIFLayer
from tfpflows.layers.residual import ResidualLayer
from tfpflows.models.cif_model import CIFModel

NAMES = ("cif-resflow", "cif-realnvp", "cif-glow")

# name: (num_steps, hidden) for vectors. cif-resflow is the reference code's 2D setting
# (config/two_d.py: 10 layers, Lipschitz MLPs of 4 hidden layers of 128, c = 0.9).
DEFAULTS = {"cif-resflow": (10, 128), "cif-realnvp": (4, 32), "cif-glow": (4, 32)}
RESFLOW_HIDDEN_LAYERS = 4
RESFLOW_COEFF = 0.9
# The reference's s/t, p(u|z) and q(u|h) networks for 2D data: two hidden layers of 10.
CIF_HIDDEN = (10, 10)


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


def cif_flow(name, event_shape, *, num_steps, hidden, seed, u_dim, cif_hidden, spec,
             default_num_samples=None):
  """A `CIFModel` of `num_steps` CIF layers (see `build_flow`)."""
  if len(event_shape) != 1:
    raise ValueError(f"{name}: image events are not supported yet; expected [D], got "
                     f"{list(event_shape)}")
  (d,) = event_shape
  cif_layers = [CIFLayer(_base_layer(name, k, d, hidden=hidden, seed=seed + k), (d,),
                         u_dim=u_dim, hidden=cif_hidden, seed=seed + 7 * k + 1,
                         name=f"cif_{k}")
                for k in range(num_steps)]
  return CIFModel(cif_layers, (d,), spec=spec, default_num_samples=default_num_samples,
                  name=name.replace("-", "_"))
