"""Keras 3 layers that own weights and networks and build `tfpflows.bijectors` from them."""

from tfpflows.layers import networks
from tfpflows.layers.actnorm import ActNormLayer
from tfpflows.layers.base import PLACEMENTS, BijectorLayer
from tfpflows.layers.cif import CIFLayer
from tfpflows.layers.conv1x1 import Conv1x1Layer, PermuteLayer
from tfpflows.layers.coupling import CouplingLayer
from tfpflows.layers.mixture_base import GaussianMixtureBase
from tfpflows.layers.multiscale import ChainLayer, FactorOutLayer, LearnedTopLayer, SqueezeLayer
from tfpflows.layers.residual import ResidualLayer
from tfpflows.layers.simple_flows import (PlanarLayer, RadialLayer, ReshapeLayer, SylvesterLayer,
                                          simple_flow_layers)

__all__ = ["PLACEMENTS", "ActNormLayer", "BijectorLayer", "CIFLayer", "ChainLayer", "Conv1x1Layer", "CouplingLayer",
           "FactorOutLayer", "GaussianMixtureBase", "LearnedTopLayer", "PermuteLayer", "PlanarLayer", "RadialLayer", "ReshapeLayer",
           "ResidualLayer", "SqueezeLayer", "SylvesterLayer", "networks", "simple_flow_layers"]
