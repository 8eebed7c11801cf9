"""Variational posteriors: parametrizations that sample a tensor."""

from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import GaussianPosterior

__all__ = ["VariationalPosterior", "GaussianPosterior"]
