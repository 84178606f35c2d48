"""i-ResNet and Residual Flows built from the layers, for vectors `[D]` and images `[H, W, C]`."""

from tfpflows import layers as L
from tfpflows.bijectors.logdet import LogDetEstimator
from tfpflows.layers import lipschitz
from tfpflows.layers.residual import ResidualLayer

NAMES = ("iresnet", "resflow")

# name: (activation, coeff, training estimator)
SETTINGS = {
    # Behrmann et al. 2019: ELU, c = 0.9, truncated power series backpropagated (biased).
    "iresnet": ("elu", 0.9, LogDetEstimator.iresnet(n_terms=5)),
    # Chen et al. 2019: LipSwish, c = 0.98, Russian roulette with 2 exact terms and the
    # memory-efficient Neumann gradient.
    "resflow": ("lipswish", 0.98, LogDetEstimator.resflow()),
}
# Power-iteration steps per training call of each spectral-norm layer (normflows' default;
# one step lets fast-changing convolution kernels outrun the estimate by a few percent).
POWER_ITERATIONS = 5


def _block(name, event_shape, *, hidden, seed, first=False, placement="density"):
  """ActNorm then a residual block `y + g(y)`, data side first."""
  activation, coeff, estimator = SETTINGS[name]
  channels = event_shape[-1]
  if len(event_shape) == 1:
    net = lipschitz.lipschitz_mlp(channels, (hidden, hidden), activation=activation,
                                  coeff=coeff, n_iterations=POWER_ITERATIONS)
  else:
    # Residual Flows drops the pre-activation of a model's first block (it would act on
    # the data directly).
    net = lipschitz.lipschitz_conv_net(channels, hidden, activation=activation, coeff=coeff,
                                       preactivation=not first,
                                       n_iterations=POWER_ITERATIONS)
  return [L.ActNormLayer(channels, event_ndims=len(event_shape)),
          ResidualLayer(net, event_shape, train_logdet=estimator, seed=seed,
                        placement=placement)]


def _image_level(name, level, num_levels, shape, *, num_steps, hidden, seed, placement):
  """Squeeze, `num_steps` blocks, factor out half (all but the last level), unsqueeze."""
  h, w, c = shape
  shape = (h // 2, w // 2, 4 * c)
  layers = [L.SqueezeLayer()]
  for k in range(num_steps):
    layers += _block(name, shape, hidden=hidden, seed=seed + 1000 * level + k,
                     first=(level == 0 and k == 0), placement=placement)
  if level < num_levels - 1:
    kept = (shape[0], shape[1], shape[2] // 2)
    inner = _image_level(name, level + 1, num_levels, kept, num_steps=num_steps,
                         hidden=hidden, seed=seed, placement=placement)
    layers.append(L.FactorOutLayer(inner, shape[2], event_ndims=3))
  layers.append(L.SqueezeLayer(unsqueeze=True))
  return L.ChainLayer(layers)


def residual_flow(name, event_shape, *, num_levels, num_steps, hidden, seed,
                  placement="density"):
  """The root layer of an i-ResNet or Residual Flow (see `build_flow`)."""
  if len(event_shape) == 1:
    layers = []
    for k in range(num_steps):
      layers += _block(name, event_shape, hidden=hidden, seed=seed + k, placement=placement)
    return L.ChainLayer(layers)
  return _image_level(name, 0, num_levels, event_shape, num_steps=num_steps, hidden=hidden,
                      seed=seed, placement=placement)
