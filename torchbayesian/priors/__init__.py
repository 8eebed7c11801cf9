"""Priors: modules whose parameters are buffers saved in the state dict."""

from torchbayesian.priors.base import Prior
from torchbayesian.priors.distribution import DistributionPrior
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.priors.laplace import LaplacePrior
from torchbayesian.priors.scale_mixture import ScaleMixturePrior

__all__ = ["Prior", "DistributionPrior", "GaussianPrior", "LaplacePrior", "ScaleMixturePrior"]
