"""Pure TFP bijectors (TensorFlow and TFP only; networks come in as callables).

Convention: `forward` maps latent to data, `inverse` data to latent; each docstring gives
the paper's data-to-latent formula as the inverse.
"""

from tfpflows.bijectors.actnorm import ActNorm
from tfpflows.bijectors.conv1x1 import Invertible1x1Conv, LUInvertible1x1Conv, lu_weight
from tfpflows.bijectors.coupling import Coupling
from tfpflows.bijectors.deferred import Deferred
from tfpflows.bijectors.factor_out import FactorOut
from tfpflows.bijectors.fixed_point import FixedPointInverse
from tfpflows.bijectors.indexed_affine import IndexedAffine
from tfpflows.bijectors.logdet import LogDetEstimator
from tfpflows.bijectors.planar import Planar
from tfpflows.bijectors.radial import Radial
from tfpflows.bijectors.residual import ResidualBlock
from tfpflows.bijectors.squeeze import Squeeze
from tfpflows.bijectors.sylvester import Sylvester

__all__ = ["ActNorm", "Coupling", "Deferred", "FactorOut", "FixedPointInverse", "IndexedAffine",
           "Invertible1x1Conv",
           "LUInvertible1x1Conv", "LogDetEstimator", "Planar", "Radial", "ResidualBlock",
           "Squeeze", "Sylvester", "lu_weight"]
