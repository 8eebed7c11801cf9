"""Empirical Bayes: fit the scale of each Gaussian prior to its posterior (type-II maximum likelihood)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchbayesian._validation import positive_finite
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.registration import posteriors

__all__ = ["fit_prior_scale_"]


@torch.no_grad()
def fit_prior_scale_(module: nn.Module, *, min_scale: float = 1e-6) -> dict[str, Tensor]:
    """Set the ``scale`` of every `GaussianPrior` in ``module`` to the one that minimises the KL, in place.

    For a prior $\\mathcal{N}(\\mathrm{loc}, s^2)$ the KL from any posterior $q$ depends on $s$
    only through $\\mathbb{E}_q[(w - \\mathrm{loc})^2]$, and is minimised by
    $s^2 = \\operatorname{mean}(\\sigma^2 + (\\mu - \\mathrm{loc})^2)$ over the elements the scale
    is shared by (all of the tensor for a scalar scale; a prior shared by several tensors pools
    them). Alternating this closed-form step with gradient steps on the ELBO is the EM form of
    empirical Bayes, or type-II maximum likelihood, for the prior variance (MacKay, 1992;
    Wu et al., 2019, "Deterministic Variational Inference for Robust Bayesian Neural Networks"):
    the prior stops pulling every weight to one fixed width, so the posterior needs less noise.
    Call it between optimizer steps, e.g. once per epoch.

    ``loc`` is kept. Priors of other types are left unchanged. The next KL (closed form or fused
    kernel) uses the new scale; the update carries no gradient.

    Args:
        module (nn.Module): A model holding posteriors (a `BayesianModule` or any module).
        min_scale (float): Lower bound on the fitted scales, which keeps the KL finite if a
            posterior collapses to zero.

    Returns:
        dict[str, Tensor]: The new ``scale`` of each fitted prior, keyed by the qualified name of
        the first posterior that uses it.

    Raises:
        TypeError: If ``module`` is not an ``nn.Module``.
        ValueError: If ``min_scale`` is not a finite positive number, or a prior's scale does not reduce to the
            tensor's shape.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(100, 10), sigma_init=1e-3)
        >>> scales = bnn.fit_prior_scale_(model)
        >>> bool(scales["module.weight"] < 1)  # default initialisation: |w| <= 0.1
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fit_prior_scale_ expects an nn.Module, got {type(module).__name__}.")
    positive_finite("fit_prior_scale_", "min_scale", min_scale)
    pooled: dict[int, tuple[str, GaussianPrior, Tensor, int]] = {}
    for name, posterior in posteriors(module):
        prior = posterior.prior
        if not isinstance(prior, GaussianPrior) or type(prior).distribution is not GaussianPrior.distribution:
            continue
        q = posterior.distribution
        loc, scale = prior.loc.detach(), prior.scale
        squares = (q.variance + (q.mean - loc).square()).detach()
        try:
            summed = squares.sum_to_size(scale.shape)
        except RuntimeError:
            raise ValueError(
                f"fit_prior_scale_: the prior scale of {name} (shape {tuple(scale.shape)}) does not reduce "
                f"to the tensor's shape {tuple(squares.shape)}."
            ) from None
        count = squares.numel() // max(scale.numel(), 1)
        if id(prior) in pooled:
            first, _, total, elements = pooled[id(prior)]
            pooled[id(prior)] = (first, prior, total + summed, elements + count)
        else:
            pooled[id(prior)] = (name, prior, summed, count)
    fitted = {}
    for name, prior, total, elements in pooled.values():
        new_scale = (total / elements).sqrt().clamp_min(min_scale)
        prior.scale.copy_(new_scale.to(prior.scale.dtype))  # in place: bumps the version the fused path checks
        fitted[name] = prior.scale.clone()
    return fitted
