"""MOPED: empirical-Bayes initialisation of a Bayesian model from a trained deterministic one."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from torchbayesian._math import softplus_inverse
from torchbayesian._selection import Filters
from torchbayesian._validation import positive_finite
from torchbayesian.module import BayesianModule
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.priors.base import as_buffer
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.registration import PosteriorSpec, PriorSpec

__all__ = ["to_bayesian"]


def to_bayesian(
    model: nn.Module,
    delta: float = 0.05,
    freeze: bool = False,
    posterior: PosteriorSpec = GaussianPosterior,
    prior: PriorSpec = None,
    *,
    prior_scale: float | Tensor = 1.0,
    min_sigma: float = 1e-6,
    include: Filters = None,
    exclude: Filters = None,
    **posterior_kwargs: Any,
) -> BayesianModule:
    """Return a Bayesian copy of a trained model, initialised with MOPED (Krishnan et al., 2020).

    "Specifying Weight Priors in Bayesian Deep Neural Networks with Empirical Bayes" (AAAI 2020):
    every selected parameter $w$ of the trained model gets a posterior with mean $\\mu = w$ and
    standard deviation $\\sigma = \\max(\\delta |w|, \\sigma_{\\min})$, and a Gaussian prior centred
    on the trained weights, $p = \\mathcal{N}(w, \\mathrm{prior\\_scale}^2)$. The floor
    ``min_sigma`` keeps the posterior of a weight that is exactly zero (or tiny) proper.

    ``model`` is **not modified**: it is deep-copied, and the copy is converted with the same
    selection rules as `BayesianModule` (``include``/``exclude``, frozen and normalization
    parameters stay deterministic). The prior centres are buffers of full size, saved in the
    ``state_dict`` (``...prior.loc``) and restored by ``load_state_dict``. In frozen mode
    (`BayesianModule.freeze` or `frozen`) the result reproduces ``model``'s outputs exactly.

    Args:
        model (nn.Module): The trained deterministic model.
        delta (float): Relative posterior scale $\\delta > 0$.
        freeze (bool): Keep the posterior means fixed at the trained weights: ``mu`` gets
            ``requires_grad=False``, so only the scales (``rho*``) are trained. (Not to be confused
            with `BayesianModule.freeze`, which makes the model predict with the means.)
        posterior (type[VariationalPosterior]): Posterior class whose mean parameter is ``mu`` and whose
            unconstrained scales are the parameters named ``rho*`` (`GaussianPosterior`: ``rho``;
            `ScaleMixturePosterior`: ``rho1`` and ``rho2``, both set to $\\delta |w|$, so the
            mixture starts as that Gaussian). ``mu`` starts at $w$ through ``from_param``.
        prior (Prior | Distribution | Mapping | Callable | None): Replaces the MOPED prior when
            given (any form accepted by `BayesianModule`).
        prior_scale (float | Tensor): Standard deviation of the MOPED prior.
        min_sigma (float): Floor on the posterior standard deviation, used where $\\delta |w|$ is
            smaller (in particular where $w = 0$).
        include (type | str | Sequence | None): Convert only parameters matching one of these.
        exclude (type | str | Sequence | None): Never convert parameters matching one of these.
        **posterior_kwargs: Other arguments of ``posterior.from_param`` (e.g. ``pi=0.3`` for
            `ScaleMixturePosterior`); MOPED sets the means and scales itself.

    Returns:
        BayesianModule: The converted copy.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``posterior`` is not a posterior class, or
            ``posterior_kwargs`` sets a mean or scale initialisation.
        ValueError: If ``delta``, ``min_sigma`` or ``prior_scale`` is not finite and positive, or
            ``model`` already holds posteriors.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> net = torch.nn.Linear(4, 2)
        >>> model = bnn.to_bayesian(net, delta=0.1)
        >>> q = dict(model.posteriors())["weight"]
        >>> torch.allclose(q.sigma, 0.1 * net.weight.abs(), rtol=1e-4)
        True
        >>> x = torch.randn(3, 4)
        >>> torch.equal(model.freeze()(x), net(x))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_bayesian expects an nn.Module, got {type(model).__name__}.")
    if not isinstance(posterior, type):
        raise TypeError(
            f"to_bayesian: posterior must be a VariationalPosterior class (MOPED builds one per tensor), "
            f"got {posterior!r}."
        )
    positive_finite("to_bayesian", "delta", delta)
    positive_finite("to_bayesian", "min_sigma", min_sigma)
    overridden = sorted(key for key in posterior_kwargs if key.startswith(("mu_", "sigma", "rho")))
    if overridden:
        raise TypeError(
            f"to_bayesian sets the posterior means and scales from the trained weights; remove {overridden} "
            "(use delta and min_sigma to choose the scales)."
        )
    scale = as_buffer(prior_scale, "prior_scale", "to_bayesian", positive=True)
    if prior is None:
        prior = _MopedPrior(scale)
    bayesian = BayesianModule(
        copy.deepcopy(model), posterior, prior, include=include, exclude=exclude, **posterior_kwargs
    )
    for qualified_name, built in bayesian.posteriors():
        _initialise(built, qualified_name, delta, min_sigma, freeze)
    return bayesian


class _MopedPrior:
    """Build, for each tensor, a Gaussian prior centred on its trained value."""

    def __init__(self, scale: Tensor) -> None:
        self.scale = scale

    def __call__(self, qualified_name: str, param: Tensor) -> GaussianPrior:
        return GaussianPrior(param.detach(), self.scale)


def _initialise(built: nn.Module, qualified_name: str, delta: float, min_sigma: float, freeze: bool) -> None:
    mu = getattr(built, "mu", None)
    scales = [param for name, param in built.named_parameters(recurse=False) if name.startswith("rho")]
    if not isinstance(mu, nn.Parameter) or not scales:
        raise TypeError(
            f"to_bayesian: {type(built).__name__} (for {qualified_name}) needs a mean parameter `mu` and "
            "unconstrained scale parameters named `rho*`; use GaussianPosterior or ScaleMixturePosterior."
        )
    with torch.no_grad():
        sigma = (delta * mu.detach().to(torch.promote_types(mu.dtype, torch.float32)).abs()).clamp_min(min_sigma)
        rho = softplus_inverse(sigma)
        for scale in scales:
            scale.copy_(rho)
    if freeze:
        mu.requires_grad_(False)
