"""Variational posteriors: parametrizations that sample a tensor."""

from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.posteriors.scale_mixture import ScaleMixturePosterior

__all__ = ["VariationalPosterior", "GaussianPosterior", "ScaleMixturePosterior"]
