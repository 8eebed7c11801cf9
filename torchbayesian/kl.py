"""KL divergence between posteriors and their priors, summed over a model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.distributions import kl_divergence as _distribution_kl

if TYPE_CHECKING:
    from torchbayesian.posteriors.base import VariationalPosterior

__all__ = ["kl_divergence"]

_has_closed_form: dict[tuple[type[Distribution], type[Distribution]], bool] = {}


def kl_divergence(module: nn.Module, *, num_samples: int | None = None) -> Tensor:
    """Return the KL divergence from every posterior in ``module`` to its prior, **summed**.

    Each posterior is counted once, even when it is registered on several tied tensors. The
    result is a scalar in the posteriors' dtype and device, with gradient to every variational
    parameter. Divide it by the training-set size when the data term is a per-example mean (see
    the ELBO guide).

    Args:
        module (nn.Module): A model holding posteriors (a `BayesianModule` or any module).
        num_samples (int | None): Fresh samples for pairs without a closed form; by default
            they use the weights sampled in the latest forward pass.

    Returns:
        Tensor: A scalar; zero when ``module`` holds no posterior.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(4, 2))
        >>> bool(bnn.kl_divergence(model) >= 0)
        True
    """
    from torchbayesian.debug import check_kl
    from torchbayesian.registration import posteriors

    if not isinstance(module, nn.Module):
        raise TypeError(f"kl_divergence expects an nn.Module, got {type(module).__name__}.")
    total: Tensor | None = None
    for _, posterior in posteriors(module):
        term = posterior_kl(posterior, num_samples=num_samples)
        check_kl(posterior, term)
        total = term if total is None else total + term
    if total is None:
        reference = next(module.parameters(), None)
        return torch.zeros((), dtype=reference.dtype if reference is not None else None,
                           device=reference.device if reference is not None else None)
    return total


def posterior_kl(posterior: VariationalPosterior, *, num_samples: int | None = None) -> Tensor:
    """Return ``KL(q || p)`` for one posterior: closed form when registered, else Monte Carlo."""
    prior = posterior.prior
    if prior is None:
        raise ValueError(
            f"{type(posterior).__name__} of shape {tuple(posterior.shape)} has no prior; "
            "register it with register_posterior(..., prior=...) or set posterior.prior."
        )
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}.")
    q = posterior.distribution
    p = prior.distribution
    key = (type(q), type(p))
    if _has_closed_form.get(key, True):
        try:
            kl = _distribution_kl(q, p)
        except NotImplementedError:
            _has_closed_form[key] = False
        else:
            _has_closed_form[key] = True
            return kl.sum()
    return _monte_carlo_kl(posterior, q, p, num_samples)


def _monte_carlo_kl(
    posterior: VariationalPosterior, q: Distribution, p: Distribution, num_samples: int | None
) -> Tensor:
    if num_samples is None:
        sample = posterior.last_sample
        if sample is None:
            sample = posterior.sample_parameters()
        return q.log_prob(sample).sum() - p.log_prob(sample).sum()
    samples = torch.stack([posterior.sample_parameters() for _ in range(num_samples)])
    return (q.log_prob(samples).sum() - p.log_prob(samples).sum()) / num_samples
