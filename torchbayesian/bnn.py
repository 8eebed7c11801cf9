"""The public API: ``from torchbayesian import bnn``."""

from torchbayesian._sampling import reuse_samples
from torchbayesian.calibration import (
    ReliabilityCurve,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    reliability_diagram,
)
from torchbayesian.kl import kl_divergence
from torchbayesian.losses import (
    ELBOLoss,
    GaussianNLLLoss,
    cyclical_kl_annealing,
    elbo_loss,
    kl_weight,
    linear_kl_warmup,
    minibatch_kl_weight,
)
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.posteriors import GaussianPosterior, VariationalPosterior
from torchbayesian.predict import predict
from torchbayesian.priors import GaussianPrior, Prior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior
from torchbayesian.uncertainty import (
    AleatoricUncertainty,
    Entropy,
    EpistemicUncertainty,
    GaussianUncertainty,
    VariationRatio,
    aleatoric_uncertainty,
    entropy,
    epistemic_uncertainty,
    gaussian_uncertainty,
    variation_ratio,
)

__all__ = [
    "AleatoricUncertainty",
    "BayesianModule",
    "ELBOLoss",
    "Entropy",
    "EpistemicUncertainty",
    "GaussianNLLLoss",
    "GaussianPosterior",
    "GaussianPrior",
    "GaussianUncertainty",
    "Prior",
    "ReliabilityCurve",
    "VariationRatio",
    "VariationalPosterior",
    "aleatoric_uncertainty",
    "brier_score",
    "cyclical_kl_annealing",
    "elbo_loss",
    "entropy",
    "epistemic_uncertainty",
    "expected_calibration_error",
    "frozen",
    "gaussian_uncertainty",
    "is_bayesian",
    "kl_divergence",
    "kl_weight",
    "linear_kl_warmup",
    "minibatch_kl_weight",
    "negative_log_likelihood",
    "posteriors",
    "predict",
    "register_posterior",
    "reliability_curve",
    "reliability_diagram",
    "remove_posterior",
    "reuse_samples",
    "variation_ratio",
]
