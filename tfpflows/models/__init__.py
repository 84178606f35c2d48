"""Keras 3 flow models: `FlowModel` and `build_flow` (Glow, RealNVP, NICE)."""

from tfpflows.models.architectures import NAMES, PERMUTATIONS, build_flow
from tfpflows.models.flow_model import FlowModel

__all__ = ["FlowModel", "NAMES", "PERMUTATIONS", "build_flow"]
