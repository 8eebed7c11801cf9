"""KL divergence between posteriors and their priors, summed over a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.distributions import kl_divergence as _distribution_kl

from torchbayesian import _native, _sampling
from torchbayesian._native import gaussian as fused
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.priors.base import Prior
from torchbayesian.priors.gaussian import GaussianPrior

__all__ = ["kl_divergence"]

_SummedKL = Callable[[VariationalPosterior, Prior], Tensor]

_summed_kl: dict[tuple[type[VariationalPosterior], type[Prior]], _SummedKL] = {}


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
    found = [posterior for _, posterior in posteriors(module)]
    fused_terms = _fused_kls(found)
    total: Tensor | None = None
    for posterior in found:
        term = fused_terms.get(posterior)
        if term is None:
            term = posterior_kl(posterior, num_samples=num_samples)
        check_kl(posterior, term)
        total = term if total is None else total + term
    if total is None:
        reference = next(module.parameters(), None)
        return torch.zeros((), dtype=reference.dtype if reference is not None else None,
                           device=reference.device if reference is not None else None)
    return total


def _fused_kls(found: list[VariationalPosterior]) -> dict[VariationalPosterior, Tensor]:
    """Closed-form KLs of the fused-kernel Gaussian posteriors in ``found`` that have none from this
    block yet, computed in one autograd node (see `_draw_together`)."""
    if not _native.applies():
        return {}
    jobs, owners = [], []
    for posterior in found:
        if isinstance(posterior, GaussianPosterior) and _sampling.kept(posterior, "kl") is None:
            job = posterior._fused_job(fused.KL_ONLY)
            if job is not None:
                jobs.append(job)
                owners.append(posterior)
    if len(jobs) < 2:
        return {}
    return {posterior: result.kl for posterior, result in zip(owners, fused.draw_many(jobs), strict=True)}


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
    summed = _find_summed_kl(type(posterior), type(prior))
    if summed is not None:
        return summed(posterior, prior)
    q = posterior.distribution
    p = prior.distribution
    try:
        # Asked every time (torch memoizes the lookup), so a pair registered later is picked up.
        return _distribution_kl(q, p).sum()
    except NotImplementedError:
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


def _register_summed_kl(
    posterior_type: type[VariationalPosterior], prior_type: type[Prior]
) -> Callable[[_SummedKL], _SummedKL]:
    """Register a function returning the summed closed-form KL for a (posterior, prior) pair.

    It applies to subclasses too, as long as they keep the pair's `distribution` properties (the KL
    depends only on the distributions); otherwise `torch.distributions.kl_divergence` is used.
    """

    def decorator(function: _SummedKL) -> _SummedKL:
        _summed_kl[posterior_type, prior_type] = function
        return function

    return decorator


def _find_summed_kl(posterior_type: type[VariationalPosterior], prior_type: type[Prior]) -> _SummedKL | None:
    # Not memoised: filling a cache while torch.compile traces would force a recompilation.
    for (q, p), function in _summed_kl.items():
        if (
            issubclass(posterior_type, q)
            and issubclass(prior_type, p)
            and posterior_type.distribution is q.distribution
            and prior_type.distribution is p.distribution
        ):
            return function
    return None


@_register_summed_kl(GaussianPosterior, GaussianPrior)
def _gaussian_kl(posterior: GaussianPosterior, prior: GaussianPrior) -> Tensor:
    """Return the summed ``KL(N(mu, sigma^2) || N(loc, scale^2))`` without building distributions.

    Element-wise the KL is ``log(scale / sigma) + (sigma^2 + (mu - loc)^2) / (2 scale^2) - 1/2``.
    """
    kept = _sampling.kept(posterior, "kl")
    if kept is not None and kept[0] is prior:
        return kept[1]
    job = posterior._fused_job(fused.KL_ONLY)
    if job is not None:
        return fused.kl_divergence(job.mu, job.rho, job.prior)
    mu, sigma, loc, scale = posterior.mu, posterior.sigma, prior.loc, prior.scale
    plain = type(mu.data) is Tensor  # tensor subclasses (e.g. FSDP's DTensor) take the generic expression
    if plain and loc.numel() == 1 and scale.numel() == 1 and loc.dim() <= mu.dim() and scale.dim() <= mu.dim():
        return _ScalarPriorGaussianKL.apply(mu, sigma, loc.reshape(()), scale.reshape(()))
    squares = sigma.square() + (mu - loc).square()
    return (squares / (2 * scale.square()) - torch.log(sigma) + (torch.log(scale) - 0.5)).sum()


class _ScalarPriorGaussianKL(torch.autograd.Function):
    """Summed Gaussian KL to a scalar prior, from three reductions and with a hand-written backward.

    The sum is ``(||sigma||^2 + ||mu - loc||^2) / (2 scale^2) - sum(log sigma) + n (log scale - 1/2)``,
    so no full-size temporary holds the prior, and the backward takes two passes over the tensors
    instead of autograd's chain of element-wise kernels.
    """

    @staticmethod
    def forward(ctx: Any, mu: Tensor, sigma: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        # No setup_context: with one, Function.apply binds the arguments through inspect on every call.
        ctx.save_for_backward(mu, sigma, loc, scale)
        return _scalar_prior_kl(mu, sigma, loc, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        mu, sigma, loc, scale = ctx.saved_tensors
        weight = grad / scale.square()
        grad_mu = grad_sigma = grad_loc = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_mu = torch.addcmul(-weight * loc, mu, weight)
        if ctx.needs_input_grad[1]:
            grad_sigma = torch.div(-grad, sigma).addcmul_(sigma, weight)
        if ctx.needs_input_grad[2]:
            grad_loc = weight * (mu.numel() * loc - mu.sum())
        if ctx.needs_input_grad[3]:
            squares = _squares(mu, sigma, loc)
            grad_scale = grad * (mu.numel() - squares / scale.square()) / scale
        return grad_mu, grad_sigma, grad_loc, grad_scale


def _squares(mu: Tensor, sigma: Tensor, loc: Tensor) -> Tensor:
    flat = sigma.reshape(-1)
    return torch.dot(flat, flat) + F.mse_loss(mu, loc.expand_as(mu), reduction="sum")


def _scalar_prior_kl(mu: Tensor, sigma: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    log_terms = mu.numel() * (torch.log(scale) - 0.5) - torch.log(sigma).sum()
    return _squares(mu, sigma, loc) / (2 * scale.square()) + log_terms
