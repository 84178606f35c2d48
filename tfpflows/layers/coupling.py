"""Keras layer owning a coupling's conditioner network."""

from tfpflows import bijectors
from tfpflows.bijectors.coupling import check_scale, check_shift
from tfpflows.layers import networks
from tfpflows.layers.base import BijectorLayer


class CouplingLayer(BijectorLayer):
  """Owns the conditioner of a `bijectors.Coupling` (the default one, or one injected).

  Args:
    channels: `C`, size of the event's last axis.
    mask, transform, reverse, event_ndims, scale, shift: as in `bijectors.Coupling`.
    hidden: width of the default conditioner (ignored when `conditioner` is given).
    conditioner: optional Keras layer (or any callable whose weights Keras tracks) mapping
      the conditioning input to `k * C_b` (channel mask) or `k * C` (checkerboard)
      outputs, `k = 2` for affine and 1 for additive. Default: `networks.glow_conv_net`
      for images, `networks.mlp` for vectors; both zero-initialise their last layer.
  """

  def __init__(self, channels, *, mask="channel", transform="affine", reverse=False,
               event_ndims=3, hidden=512, conditioner=None, scale="sigmoid", shift="data",
               **kwargs):
    super().__init__(**kwargs)
    check_scale(scale, transform, "CouplingLayer")
    check_shift(shift, "CouplingLayer")
    self.scale, self.shift = scale, shift
    self.channels, self.mask, self.transform = int(channels), mask, transform
    self.reverse, self.event_ndims = bool(reverse), event_ndims
    if mask == "channel":
      # Coupling conditions on n_a = C // 2 entries (C - C // 2 when reversed).
      c_b = self.channels // 2 if reverse else self.channels - self.channels // 2
    else:
      c_b = self.channels
    out = c_b * (2 if transform == "affine" else 1)
    if conditioner is None:
      conditioner = (networks.glow_conv_net(hidden, out) if event_ndims == 3
                     else networks.mlp(hidden, out))
    self.conditioner = conditioner

  def bijector(self, training=False):
    del training
    return bijectors.Coupling(self.conditioner, mask=self.mask, transform=self.transform,
                              reverse=self.reverse, event_ndims=self.event_ndims, scale=self.scale,
                              shift=self.shift, name=self.name)
