"""The public API: ``from torchbayesian import bnn``."""

from torchbayesian._sampling import reuse_samples
from torchbayesian.kl import kl_divergence
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.moped import to_bayesian
from torchbayesian.posteriors import GaussianPosterior, ScaleMixturePosterior, VariationalPosterior
from torchbayesian.priors import DistributionPrior, GaussianPrior, LaplacePrior, Prior, ScaleMixturePrior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior

__all__ = [
    "BayesianModule",
    "DistributionPrior",
    "GaussianPosterior",
    "GaussianPrior",
    "LaplacePrior",
    "Prior",
    "ScaleMixturePosterior",
    "ScaleMixturePrior",
    "VariationalPosterior",
    "frozen",
    "is_bayesian",
    "kl_divergence",
    "posteriors",
    "register_posterior",
    "remove_posterior",
    "reuse_samples",
    "to_bayesian",
]
