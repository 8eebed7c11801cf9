"""Flipout and local reparameterization: posteriors that sample a layer's output, with per-layer kernels."""

from torchbayesian.estimators import layers as _layers  # noqa: F401  (registers the torch layers)
from torchbayesian.estimators.base import EstimatorPosterior
from torchbayesian.estimators.flipout import FlipoutPosterior
from torchbayesian.estimators.lrt import LocalReparameterizationPosterior
from torchbayesian.estimators.registry import LayerOp, find_kernel, register_estimator, supported_layers

__all__ = [
    "EstimatorPosterior",
    "FlipoutPosterior",
    "LayerOp",
    "LocalReparameterizationPosterior",
    "find_kernel",
    "register_estimator",
    "supported_layers",
]
