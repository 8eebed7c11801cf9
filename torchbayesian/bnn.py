"""The public API: ``from torchbayesian import bnn``.

`BayesianTrainer`, `load_bayesian`, `save_bayesian` and `transformer_policy` need transformers and are
imported on first access; they are left out of ``__all__`` so that ``import *`` does not need it.
"""

from typing import Any

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

_HUGGINGFACE = ("BayesianTrainer", "load_bayesian", "save_bayesian", "transformer_policy")


def __getattr__(name: str) -> Any:
    # The transformers integration is imported on first use, so that the core does not need transformers.
    if name in _HUGGINGFACE:
        from torchbayesian.integrations import huggingface

        return getattr(huggingface, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HUGGINGFACE])
