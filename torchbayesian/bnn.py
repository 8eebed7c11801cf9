"""The public API: ``from torchbayesian import bnn``."""

from torchbayesian._sampling import reuse_samples
from torchbayesian.decorator import bayesian
from torchbayesian.estimators import (
    FlipoutPosterior,
    LayerOp,
    LocalReparameterizationPosterior,
    register_estimator,
)
from torchbayesian.kl import kl_divergence
from torchbayesian.layers import (
    GRU,
    LSTM,
    BayesianLayer,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    DeConv1d,
    DeConv2d,
    DeConv3d,
    Embedding,
    Linear,
    ModuleList,
    Sequential,
)
from torchbayesian.mixin import BayesianMixin
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.moped import to_bayesian
from torchbayesian.posteriors import GaussianPosterior, ScaleMixturePosterior, VariationalPosterior
from torchbayesian.priors import DistributionPrior, GaussianPrior, LaplacePrior, Prior, ScaleMixturePrior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior

__all__ = [
    "BayesianLayer",
    "BayesianMixin",
    "BayesianModule",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "DeConv1d",
    "DeConv2d",
    "DeConv3d",
    "DistributionPrior",
    "Embedding",
    "FlipoutPosterior",
    "GRU",
    "GaussianPosterior",
    "GaussianPrior",
    "LSTM",
    "LaplacePrior",
    "LayerOp",
    "Linear",
    "LocalReparameterizationPosterior",
    "ModuleList",
    "Prior",
    "ScaleMixturePosterior",
    "ScaleMixturePrior",
    "Sequential",
    "VariationalPosterior",
    "bayesian",
    "frozen",
    "is_bayesian",
    "kl_divergence",
    "posteriors",
    "register_estimator",
    "register_posterior",
    "remove_posterior",
    "reuse_samples",
    "to_bayesian",
]
