"""The public API: ``from torchbayesian import bnn``."""

from torchbayesian._sampling import reuse_samples
from torchbayesian.checkpoints import IncompatibleKeys, load_deterministic_state_dict, to_deterministic
from torchbayesian.debug import detect_anomalies
from torchbayesian.distributed import seed_per_rank
from torchbayesian.kl import kl_divergence
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.posteriors import GaussianPosterior, VariationalPosterior
from torchbayesian.priors import GaussianPrior, Prior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior

__all__ = [
    "BayesianModule",
    "GaussianPosterior",
    "GaussianPrior",
    "IncompatibleKeys",
    "Prior",
    "VariationalPosterior",
    "detect_anomalies",
    "frozen",
    "is_bayesian",
    "kl_divergence",
    "load_deterministic_state_dict",
    "posteriors",
    "register_posterior",
    "remove_posterior",
    "reuse_samples",
    "seed_per_rank",
    "to_deterministic",
]
