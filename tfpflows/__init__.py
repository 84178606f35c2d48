"""tfpflows: normalizing flows as TensorFlow Probability bijectors, trained with Keras 3.

Subpackages:
  * `tfpflows.bijectors`: pure `tfp.bijectors` (no Keras): ActNorm, invertible 1x1
    convolutions, couplings, squeeze, multi-scale factor-out.
  * `tfpflows.layers`: Keras 3 layers that own the weights and networks and build those
    bijectors from the current weight values.
  * `tfpflows.models`: `FlowModel` (a `keras.Model` that trains with `fit`) and
    `build_flow` for Glow, RealNVP and NICE.
  * `tfpflows.export`: SavedModel export for serving without tfpflows.
  * `tfpflows.data`: toy densities and data loaders.

Direction convention, as everywhere in TFP: a bijector's `forward` maps latent to data
(sampling) and its `inverse` maps data to latent (density evaluation and training).
Docstrings write each paper's data-to-latent formula as the `inverse`.
"""

__version__ = "0.1.0"
