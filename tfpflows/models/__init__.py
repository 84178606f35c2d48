"""Keras 3 flow models: `FlowModel` and `build_flow` (Glow, RealNVP, NICE)."""

from tfpflows.models.architectures import CIF_NAMES, NAMES, PERMUTATIONS, build_flow
from tfpflows.models.cif_model import CIFModel
from tfpflows.models.flow_model import FlowModel

__all__ = ["CIFModel", "CIF_NAMES", "FlowModel", "NAMES", "PERMUTATIONS", "build_flow"]
