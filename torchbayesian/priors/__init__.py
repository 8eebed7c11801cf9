"""Priors: modules whose parameters are buffers saved in the state dict."""

from torchbayesian.priors.base import Prior
from torchbayesian.priors.gaussian import GaussianPrior

__all__ = ["Prior", "GaussianPrior"]
