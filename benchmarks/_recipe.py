"""torchbayesian's regression recipe, as `benchmarks/uci.py` applies it to a stacked model.

The recipe (see the guide "Getting good uncertainty"): every weight and bias gets a mean-field
`bnn.GaussianPosterior` whose mean starts at the layer's own initialisation and whose standard
deviation starts small (``sigma_init``); a Gaussian prior ``N(0, prior_scale^2)``; the negative ELBO
with the mean-reduced Gaussian NLL and KL weight ``1 / N`` (``T / N`` with KL temperatures
``temperatures``, chosen per split when several), after an optional linear KL warm-up;
optionally (``empirical_bayes``) each prior scale refitted to its posterior every epoch by
`bnn.fit_prior_scale_`, one scale per tensor and network; the noise model (a predicted
log-variance, or one learned noise level), the learning rate and the number of epochs chosen on a
validation part of the training data; a Monte Carlo predictive mixture at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchbayesian import bnn

POSTERIORS = {"gaussian": bnn.GaussianPosterior, "lrt": bnn.LocalReparameterizationPosterior}
"""Posteriors the recipe can use: one weight sample per network and mini-batch, or local reparameterization
(independent noise per example and unit). Flipout is not offered: its signs are drawn per entry of the
first dimension, which in a stacked model is the network, not the example."""


@dataclass(frozen=True)
class Recipe:
    """The recipe's settings; the defaults are those the benchmark tables report."""

    sigma_init: float = 1e-3
    prior_scale: float = 1.0
    fan_in_prior: bool = False
    warmup: float = 0.0
    empirical_bayes: bool = False
    noise: tuple[str, ...] = ("heteroscedastic", "homoscedastic")
    temperatures: tuple[float, ...] = (1.0,)
    posterior: str = "gaussian"


def warmup_steps(recipe: Recipe, total_steps: int) -> int:
    """Steps of the linear KL warm-up for a run of ``total_steps``."""
    return int(recipe.warmup * total_steps)


def make_bayesian(net: nn.Module, recipe: Recipe) -> bnn.BayesianModule:
    """Make every weight and bias of ``net`` Bayesian; ``log_noise`` (homoscedastic noise) stays a point estimate."""
    def prior(name: str, param: torch.Tensor) -> bnn.GaussianPrior:
        scale = recipe.prior_scale / (net.fan_in(name) ** 0.5 if recipe.fan_in_prior else 1.0)
        if recipe.empirical_bayes:  # one scale per stacked network, so that each split is fitted on its own
            return bnn.GaussianPrior(0.0, torch.full((param.shape[0],) + (1,) * (param.dim() - 1), scale))
        return bnn.GaussianPrior(0.0, scale)

    posterior = POSTERIORS[recipe.posterior]
    return bnn.BayesianModule(net, posterior, prior, exclude=["log_noise"], sigma_init=recipe.sigma_init)
