"""Glow, RealNVP and NICE built from the layers, for vectors `[D]` and images `[H, W, C]`."""

import numbers

import tensorflow as tf

from tfpflows import layers as L
from tfpflows.bijectors.coupling import SCALES, SHIFTS
from tfpflows.layers import simple_flows
from tfpflows.layers.base import check_placement
from tfpflows.models import cif_flows, residual_flows
from tfpflows.models.flow_model import FlowModel

COUPLING_NAMES = ("glow", "nice", "realnvp")
NAMES = COUPLING_NAMES + residual_flows.NAMES + simple_flows.SIMPLE_NAMES
# Continuously indexed flows (`CIFModel`s, not `FlowModel`s): `build_flow` builds them too.
CIF_NAMES = cif_flows.NAMES
PERMUTATIONS = ("lu", "plain", "reverse", "random")
# Families whose maps are explicit in one direction only: they take `placement`.
PLACED_NAMES = residual_flows.NAMES + simple_flows.SIMPLE_NAMES

_DEFAULTS = {
    # name: (num_steps, hidden) for vectors, then for images
    "glow": ((8, 64), (4, 400)),
    "realnvp": ((8, 64), (4, 400)),
    "nice": ((8, 64), (4, 400)),
    "iresnet": ((8, 64), (4, 128)),
    "resflow": ((8, 64), (4, 128)),
    "planar": ((16, 64), (16, 64)),
    "radial": ((16, 64), (16, 64)),
    "sylvester": ((8, 64), (8, 64)),
}


def _mixing(permutation, channels, *, event_ndims, seed):
  """Glow's channel mixing: a learned 1x1 convolution, or a fixed permutation (Glow, 4.1)."""
  if permutation in ("lu", "plain"):
    return L.Conv1x1Layer(channels, kind=permutation, event_ndims=event_ndims, seed=seed)
  return L.PermuteLayer(channels, kind=permutation, seed=seed)


def _step(name, k, channels, *, event_ndims, hidden, seed, permutation="lu",
          affine_scale="sigmoid", actnorm=True, shift_side="data"):
  """One flow step, data side first: the layers of step `k` of model `name` (Glow and
  RealNVP without their ActNorm for `actnorm=False`). `shift_side="latent"`: the
  couplings add their shift after the scale and the ActNorm closes the step."""
  norm = [L.ActNormLayer(channels, event_ndims=event_ndims)] if actnorm else []
  def place(parts):   # the ActNorm on the step's data side, or on its latent side
    return norm + parts if shift_side == "data" else parts + norm
  if name == "glow":
    return place([_mixing(permutation, channels, event_ndims=event_ndims, seed=seed),
                  L.CouplingLayer(channels, mask="channel", transform="affine",
                                  event_ndims=event_ndims, hidden=hidden, scale=affine_scale,
                                  shift=shift_side)])
  # RealNVP and NICE: alternating masks instead of a learned permutation. On images, two
  # checkerboard couplings then two channel couplings (RealNVP, section 3.6); on vectors,
  # the two halves alternate.
  mask = "checkerboard" if (event_ndims == 3 and (k // 2) % 2 == 0) else "channel"
  coupling = L.CouplingLayer(channels, mask=mask, reverse=bool(k % 2),
                             transform="affine" if name == "realnvp" else "additive",
                             event_ndims=event_ndims, hidden=hidden,
                             scale=affine_scale if name == "realnvp" else "sigmoid",
                             shift=shift_side)
  if name == "realnvp":   # ActNorm in place of RealNVP's batch normalisation
    return place([coupling])
  return [coupling]


def _steps(name, num_steps, channels, *, event_ndims, hidden, seed, permutation,
           affine_scale="sigmoid", step_actnorm=True, shift_side="data"):
  """The steps, data side first; without `step_actnorm`, one ActNorm only: in the
  data-side step (`shift_side="data"`) or the latent-side one (`"latent"`)."""
  last = 0 if shift_side == "data" else num_steps - 1
  out = []
  for k in range(num_steps):
    out += _step(name, k, channels, event_ndims=event_ndims, hidden=hidden, seed=seed + k,
                 permutation=permutation, affine_scale=affine_scale,
                 actnorm=step_actnorm or k == last, shift_side=shift_side)
  return out


def _image_level(name, level, num_levels, channels, *, num_steps, hidden, seed, permutation,
                 affine_scale="sigmoid", top_shape=None, shift_side="data"):
  """Level `level`: squeeze, K steps, factor out half (all but the last level), unsqueeze.

  Closing each level with an unsqueeze keeps it shape-preserving, as `FactorOut` needs of
  its inner flow, and makes the latent the shape of the data.
  """
  channels *= 4
  layers = [L.SqueezeLayer()]
  layers += _steps(name, num_steps, channels, event_ndims=3, hidden=hidden,
                   seed=seed + 1000 * level, permutation=permutation,
                   affine_scale=affine_scale, shift_side=shift_side)
  if level < num_levels - 1:
    inner = _image_level(name, level + 1, num_levels, channels // 2, num_steps=num_steps,
                         hidden=hidden, seed=seed, permutation=permutation,
                         affine_scale=affine_scale, top_shape=top_shape,
                         shift_side=shift_side)
    layers.append(L.FactorOutLayer(inner, channels, event_ndims=3))
  elif top_shape is not None:   # learn_top: the top level's learned prior
    layers.append(L.LearnedTopLayer(top_shape))
  layers.append(L.SqueezeLayer(unsqueeze=True))
  return L.ChainLayer(layers)


def _check_affine_option(arg, value, choices, name):
  """One-line ValueError unless `value` is one of `choices` (the first is the default) and,
  when not the default, `name` is a flow with affine couplings (glow, realnvp)."""
  if value not in choices:
    raise ValueError(f"build_flow: {arg} must be one of {', '.join(choices)}; got {value!r}")
  if value != choices[0] and name not in ("glow", "realnvp"):
    raise ValueError(f"build_flow: {arg}={value!r} applies to glow and realnvp only; got "
                     f"{name} (expected the default {choices[0]!r})")


def build_flow(name, event_shape, *, num_levels=None, num_steps=None, hidden=None, seed=0,
               permutation="lu", placement="density", base_components=1,
               affine_scale="sigmoid", step_actnorm=True, u_dim=1,
               num_importance_samples=None, learn_top=False, shift_side="data"):
  """Builds a `FlowModel`: Glow, RealNVP, NICE, i-ResNet, Residual Flow, planar, radial, Sylvester.

  Vectors (`event_shape = [D]`): `num_steps` steps on the whole vector, MLP conditioners.
  Images (`event_shape = [H, W, C]`, pixel values in `[0, 256)`): the multi-scale
  architecture: `num_levels` levels, each a squeeze, `num_steps` steps, and (except the
  last) a factor-out of half the channels with a learned conditional prior.

  Steps (data side first): Glow = ActNorm, LU 1x1 convolution, affine coupling (Kingma &
  Dhariwal 2018); RealNVP = ActNorm, affine coupling with alternating checkerboard/channel
  masks (Dinh et al. 2017); NICE = additive coupling with alternating masks (Dinh et al.
  2014), and a final ActNorm as NICE's diagonal scaling. Conditioners: Glow's conv3x3 -
  conv1x1 - zero conv3x3 for images, a 2-layer MLP for vectors, `hidden` units wide.

  Residual flows (`tfpflows.models.residual_flows`): steps of ActNorm and a residual block
  `y + g(y)` with a spectrally normalised `g` (MLP `hidden`-`hidden` for vectors; conv3x3 -
  conv1x1 - conv3x3 for images, in the same multi-scale architecture): `"resflow"` (Chen et
  al. 2019: LipSwish, c = 0.98, Russian-roulette log-det with the Neumann gradient) and
  `"iresnet"` (Behrmann et al. 2019: ELU, c = 0.9, 5-term power series). Evaluation uses
  the exact log-det for events of at most 16 entries, else a low-variance estimator.

  CIF (`"cif-resflow"`, `"cif-realnvp"`, `"cif-glow"`): a `CIFModel` (Cornish et al. 2020)
  of CIF layers, each an ActNorm and one step of the base family (a residual block; an
  affine coupling; a 1x1 convolution and a coupling) indexed by its own `u` of dimension
  `u_dim` through `z = (h + t(u)) e^{s(u)}`. Vectors: `num_steps` layers, `p(u | z)`,
  `q(u | h)` and `(s, t)` MLPs of two hidden layers of 10 (the reference code's 2D
  setting); defaults cif-resflow 10 layers, Lipschitz MLPs of 4 x 128, c = 0.9 (the
  reference's 2D ResFlow), cif-realnvp and cif-glow 4 layers, hidden 32. Images: the
  multi-scale architecture above with `num_steps` CIF layers per level, `u` one channel
  (`u_dim`) per pixel at each scale and the three networks two 3x3 convolutions of 32;
  defaults (`cif_flows.IMAGE_DEFAULTS`, the reference's `resflow-small` and its RealNVP
  and Glow variants, Glow scaled down): cif-resflow 3 levels x 4 blocks of 128 channels,
  cif-realnvp 3 x 4 couplings of 64, cif-glow 2 x 8 steps of 128.

  Planar, radial, Sylvester (`tfpflows.layers.simple_flows`): an ActNorm then `num_steps`
  maps on the (flattened) event, each with its exact log-det; inverses by closed form or
  bounded 1-D solves. Sylvester uses `M = min(D, hidden)` orthogonal columns.

  Args:
    name: one of `NAMES` or `CIF_NAMES`.
    event_shape: `[D]` (D >= 2) or `[H, W, C]` (H, W divisible by `2 ** num_levels`).
    num_levels: image levels `L` (default 3); must be None or 1 for vectors.
    num_steps: steps `K` per level (default 4 for images, 8 for vectors).
    hidden: conditioner width (default 400 for images, 64 for vectors).
    seed: seed of the random rotations initialising the 1x1 convolutions (and of the
      `"random"` permutation).
    permutation: Glow's channel mixing: `"lu"` (LU-decomposed 1x1 convolution, default),
      `"plain"` (1x1 convolution, log-det from QR), or the fixed `"reverse"` and `"random"`
      permutations Glow compares them with. Glow only.
    placement: where the maps that are explicit in one direction only sit (planar, radial,
      Sylvester, i-ResNet, Residual Flow; `PLACED_NAMES`): `"density"` (default) on the
      data-to-latent side, for density estimation (exact, cheap `log_prob`; sampling
      inverts iteratively), or `"sample"` on the latent-to-data side, for variational
      inference (exact, cheap `sample` and `experimental_sample_and_log_prob`; `log_prob`
      of other points inverts iteratively). Coupling flows are explicit both ways and
      take `"density"` only. `tfpflows.vi.build_surrogate` picks `"sample"`.
    base_components: `K`; 1 (default) for the standard normal base, `K >= 2` for a
      learnable mixture of `K` diagonal Gaussians (`layers.GaussianMixtureBase`, vectors
      only): several modes for the flow to move, which keeps a variational fit from
      settling on one mode of a multimodal target.
    step_actnorm: Glow's and RealNVP's ActNorm in every step (default), or, with False, in
      the data-side step only (vectors): with `affine_scale="exp"` the couplings scale
      freely, and the other ActNorms only duplicate scale parameters, which an Adam
      variational fit moves all at once (`tfpflows.vi.build_surrogate` picks False).
    u_dim: dimension of each CIF layer's index `u` (CIF models only; default 1).
    num_importance_samples: `K` of a CIF model's importance-sampled `log_prob`, its
      evaluation and its SavedModel's `log_prob` (CIF models only; default None: 100 for
      vectors, 10 for images, the reference code's).
    learn_top: Glow's learned top prior (`layers.LearnedTopLayer`: per-element mean and
      log-scale of the top level's latent, zero-initialised) for glow, realnvp and nice on
      images; default False.
    affine_scale: the scale of Glow's and RealNVP's affine couplings (`bijectors.Coupling`'s
      `scale`): `"sigmoid"` (default, Glow's `sigmoid(h + 2)`, never expanding on the way
      to the latent: stable for density estimation) or `"exp"` (`exp(10 tanh(h / 10))`,
      contracting and expanding alike, the identity at initialisation: for variational
      inference, where `tfpflows.vi.build_surrogate` picks it).
    shift_side: where Glow's and RealNVP's free shifts act: `"data"` (default; Glow's
      order, couplings `z_b = (y_b + t) s`, each ActNorm before its step's coupling) or
      `"latent"` (RealNVP's order, `z_b = y_b s + t`, each ActNorm after its step's
      coupling, and with `step_actnorm=False` the one ActNorm next to the base). On the
      sampling side every shift is then in latent units, scaled by the local scale, as in
      an inverse autoregressive flow: for variational inference, where a data-unit shift
      jittered by Adam moves mass across a narrow region of the target
      (`tfpflows.vi.build_surrogate` picks it; `bijectors.Coupling`'s `shift`).

  Raises:
    ValueError: a one-line message for an unknown name or an impossible shape.
  """
  if name not in NAMES + CIF_NAMES:
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(NAMES + CIF_NAMES)}")
  if permutation not in PERMUTATIONS:
    raise ValueError(f"unknown permutation {permutation!r}; expected one of "
                     f"{', '.join(PERMUTATIONS)}")
  if permutation != "lu" and name != "glow":
    raise ValueError(f"permutation={permutation!r} applies to glow only; {name} alternates "
                     f"its coupling masks instead")
  if (isinstance(base_components, bool) or not isinstance(base_components, numbers.Integral)
      or base_components < 1):
    raise ValueError(f"build_flow: base_components must be a positive integer; got "
                     f"{base_components!r}")
  if base_components > 1 and len(event_shape) != 1:
    raise ValueError(f"base_components={base_components} applies to vector events [D]; got "
                     f"event_shape {list(event_shape)}")
  if not isinstance(learn_top, bool):
    raise ValueError(f"build_flow: learn_top must be True or False; got {learn_top!r}")
  if learn_top and (name not in ("glow", "realnvp", "nice") or len(event_shape) != 3):
    raise ValueError(f"learn_top=True applies to glow, realnvp and nice on images [H, W, C]; "
                     f"got {name} on event_shape {list(event_shape)}")
  _check_affine_option("shift_side", shift_side, SHIFTS, name)
  if name in cif_flows.NAMES:
    return _build_cif(name, event_shape, num_levels=num_levels, num_steps=num_steps,
                      hidden=hidden, seed=seed, permutation=permutation, placement=placement,
                      base_components=base_components, affine_scale=affine_scale,
                      step_actnorm=step_actnorm, u_dim=u_dim,
                      num_importance_samples=num_importance_samples)
  if not isinstance(step_actnorm, bool):
    raise ValueError(f"build_flow: step_actnorm must be True or False; got {step_actnorm!r}")
  if not step_actnorm and (name not in ("glow", "realnvp") or len(event_shape) != 1):
    raise ValueError(f"step_actnorm=False applies to glow and realnvp on vectors [D]; got "
                     f"{name} on event_shape {list(event_shape)}")
  if num_importance_samples is not None:
    raise ValueError(f"num_importance_samples applies to the CIF models "
                     f"({', '.join(cif_flows.NAMES)}); {name} has an exact log_prob")
  if u_dim != 1:
    raise ValueError(f"u_dim applies to the CIF models ({', '.join(cif_flows.NAMES)}); "
                     f"{name} has no index")
  _check_affine_option("affine_scale", affine_scale, SCALES, name)
  check_placement(placement, "build_flow")
  if placement != "density" and name not in PLACED_NAMES:
    raise ValueError(f"placement={placement!r} applies to {', '.join(PLACED_NAMES)}; {name} "
                     f"is explicit in both directions (expected placement='density')")
  for arg, value in (("num_levels", num_levels), ("num_steps", num_steps),
                     ("hidden", hidden)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 1):
      raise ValueError(f"build_flow: {arg} must be a positive integer or None (the "
                       f"default); got {value!r}")
  if any(isinstance(d, bool) or int(d) != d or d < 1 for d in event_shape):
    raise ValueError(f"build_flow: event_shape must hold positive integers; got "
                     f"{list(event_shape)}")
  event_shape = tuple(int(d) for d in event_shape)
  image = len(event_shape) == 3
  if len(event_shape) not in (1, 3):
    raise ValueError(f"event_shape must be [D] or [H, W, C], got {list(event_shape)}")
  (vec_steps, vec_hidden), (img_steps, img_hidden) = _DEFAULTS[name]
  num_steps = (img_steps if image else vec_steps) if num_steps is None else num_steps
  hidden = (img_hidden if image else vec_hidden) if hidden is None else hidden
  spec = dict(name=name, event_shape=list(event_shape), num_steps=num_steps, hidden=hidden,
              seed=seed, permutation=permutation)
  if placement != "density":
    spec["placement"] = placement
  if affine_scale != "sigmoid":
    spec["affine_scale"] = affine_scale
  if not step_actnorm:
    spec["step_actnorm"] = False
  if shift_side != "data":
    spec["shift_side"] = shift_side
  base = None
  if base_components > 1:
    spec["base_components"] = int(base_components)
    base = L.GaussianMixtureBase(event_shape[0], int(base_components), seed=seed)
  if name in simple_flows.SIMPLE_NAMES:
    if num_levels not in (None, 1):
      raise ValueError(f"num_levels applies to the multi-scale flows only; got {num_levels} "
                       f"for {name}")
    flow = L.ChainLayer(simple_flows.simple_flow_layers(
        name, event_shape, num_steps=num_steps, hidden=hidden, seed=seed,
        placement=placement))
  elif image:
    num_levels = 3 if num_levels is None else int(num_levels)
    h, w, c = event_shape
    if num_levels < 1:
      raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if h % 2 ** num_levels or w % 2 ** num_levels:
      raise ValueError(f"image size {h}x{w} is not divisible by 2**num_levels = "
                       f"{2 ** num_levels} (num_levels={num_levels})")
    spec["num_levels"] = num_levels
    if name in residual_flows.NAMES:
      flow = residual_flows.residual_flow(name, event_shape, num_levels=num_levels,
                                          num_steps=num_steps, hidden=hidden, seed=seed,
                                          placement=placement)
    else:
      top = (h // 2 ** num_levels, w // 2 ** num_levels, c * 2 ** (num_levels + 1))
      flow = _image_level(name, 0, num_levels, c, num_steps=num_steps, hidden=hidden,
                          seed=seed, permutation=permutation, affine_scale=affine_scale,
                          top_shape=top if learn_top else None, shift_side=shift_side)
      if learn_top:
        spec["learn_top"] = True
    if name == "nice":
      flow = L.ChainLayer([flow, L.ActNormLayer(c, event_ndims=3)])
  else:
    if num_levels not in (None, 1):
      raise ValueError(f"num_levels applies to images only; got {num_levels} for vectors")
    (d,) = event_shape
    if d < 2:
      raise ValueError(f"vector flows need D >= 2 dimensions, got {d}")
    if name in residual_flows.NAMES:
      flow = residual_flows.residual_flow(name, event_shape, num_levels=1,
                                          num_steps=num_steps, hidden=hidden, seed=seed,
                                          placement=placement)
    else:
      layers = _steps(name, num_steps, d, event_ndims=1, hidden=hidden, seed=seed,
                      permutation=permutation, affine_scale=affine_scale,
                      step_actnorm=step_actnorm, shift_side=shift_side)
      if name == "nice":
        layers.append(L.ActNormLayer(d, event_ndims=1))
      flow = L.ChainLayer(layers)
  model = FlowModel(flow, event_shape, image=image, spec=spec, base=base, name=f"{name}_flow")
  model.build()  # every weight exists now, inside the caller's distribution scope
  return model


def _build_cif(name, event_shape, *, num_levels, num_steps, hidden, seed, permutation,
               placement, base_components, affine_scale, step_actnorm, u_dim,
               num_importance_samples):
  """`build_flow` for the CIF models: checks, defaults, the spec, then `cif_flows`."""
  for arg, value, default in (("permutation", permutation, "lu"),
                              ("placement", placement, "density"),
                              ("base_components", base_components, 1),
                              ("affine_scale", affine_scale, "sigmoid"),
                              ("step_actnorm", step_actnorm, True)):
    if value != default:
      raise ValueError(f"build_flow: {arg}={value!r} does not apply to {name}; expected "
                       f"the default {default!r}")
  for arg, value in (("num_levels", num_levels), ("num_steps", num_steps), ("hidden", hidden),
                     ("u_dim", u_dim), ("num_importance_samples", num_importance_samples)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 1):
      raise ValueError(f"build_flow: {arg} must be a positive integer; got {value!r}")
  if (not isinstance(event_shape, (list, tuple)) or len(event_shape) not in (1, 3)
      or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
             for d in event_shape)):
    raise ValueError(f"build_flow: {name} takes vector events [D] or images [H, W, C] of "
                     f"positive integers; got event_shape {event_shape!r}")
  event_shape = tuple(int(d) for d in event_shape)
  image = len(event_shape) == 3
  if image:
    default_levels, default_steps, default_hidden = cif_flows.IMAGE_DEFAULTS[name]
    num_levels = default_levels if num_levels is None else int(num_levels)
    h, w, _ = event_shape
    if h % 2 ** num_levels or w % 2 ** num_levels:
      raise ValueError(f"build_flow: image size {h}x{w} is not divisible by 2**num_levels = "
                       f"{2 ** num_levels} (num_levels={num_levels})")
  else:
    if num_levels not in (None, 1):
      raise ValueError(f"build_flow: num_levels applies to images only; got {num_levels} "
                       f"for vectors")
    if event_shape[0] < 2:
      raise ValueError(f"build_flow: {name} needs D >= 2 dimensions; got event_shape "
                       f"{list(event_shape)}")
    default_steps, default_hidden = cif_flows.DEFAULTS[name]
  num_steps = default_steps if num_steps is None else int(num_steps)
  hidden = default_hidden if hidden is None else int(hidden)
  spec = dict(name=name, event_shape=list(event_shape), num_steps=num_steps, hidden=hidden,
              seed=seed)
  if image:
    spec["num_levels"] = num_levels
  if u_dim != 1:
    spec["u_dim"] = int(u_dim)
  if num_importance_samples is not None:
    spec["num_importance_samples"] = int(num_importance_samples)
  model = cif_flows.cif_flow(
      name, event_shape, num_steps=num_steps, hidden=hidden, seed=seed, u_dim=int(u_dim),
      cif_hidden=cif_flows.IMAGE_CIF_HIDDEN if image else cif_flows.CIF_HIDDEN, spec=spec,
      default_num_samples=num_importance_samples, num_levels=num_levels)
  model.build()
  return model
