"""The public API: ``from torchbayesian import bnn``."""

from torchbayesian._sampling import reuse_samples
from torchbayesian.estimators import (
    FlipoutPosterior,
    LayerOp,
    LocalReparameterizationPosterior,
    register_estimator,
)
from torchbayesian.kl import kl_divergence
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.posteriors import GaussianPosterior, VariationalPosterior
from torchbayesian.priors import GaussianPrior, Prior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior

__all__ = [
    "BayesianModule",
    "FlipoutPosterior",
    "GaussianPosterior",
    "GaussianPrior",
    "LayerOp",
    "LocalReparameterizationPosterior",
    "Prior",
    "VariationalPosterior",
    "frozen",
    "is_bayesian",
    "kl_divergence",
    "posteriors",
    "register_estimator",
    "register_posterior",
    "remove_posterior",
    "reuse_samples",
]
