"""Pure TFP bijectors (TensorFlow and TFP only; networks come in as callables).

Convention: `forward` maps latent to data, `inverse` data to latent; each docstring gives
the paper's data-to-latent formula as the inverse.
"""

from tfpflows.bijectors.actnorm import ActNorm
from tfpflows.bijectors.conv1x1 import Invertible1x1Conv, LUInvertible1x1Conv, lu_weight
from tfpflows.bijectors.coupling import Coupling
from tfpflows.bijectors.factor_out import FactorOut
from tfpflows.bijectors.squeeze import Squeeze

__all__ = ["ActNorm", "Coupling", "FactorOut", "Invertible1x1Conv", "LUInvertible1x1Conv",
           "Squeeze", "lu_weight"]
