"""KL divergence between posteriors and their priors, summed over a model; the closed forms this library adds."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchbayesian import _sampling
from torchbayesian._kl_dispatch import posterior_kl, register_rule
from torchbayesian._native import ops
from torchbayesian.posteriors.gaussian import GaussianPosterior, _gaussian_kl_inputs, _gaussian_pair
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.registration import posteriors

__all__ = ["kl_divergence"]


def kl_divergence(module: nn.Module, *, num_samples: int | None = None) -> Tensor:
    """Return the KL divergence from every posterior in ``module`` to its prior, **summed**.

    Each posterior is counted once, even when it is registered on several tied tensors. The
    result is a scalar in the posteriors' dtype (float32 for float16 and bfloat16 posteriors,
    whose range a summed KL quickly exceeds) and device, with gradient to every variational
    parameter. Divide it by the training-set size when the data term is a per-example mean (see
    the ELBO guide).

    The KL of a `GaussianPosterior` to a `GaussianPrior` is computed in the same pass as the
    forward's weight sample; called after that forward, while the variational parameters are
    unchanged, this function reuses it.

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
    if not isinstance(module, nn.Module):
        raise TypeError(f"kl_divergence expects an nn.Module, got {type(module).__name__}.")
    total: Tensor | None = None
    for _, posterior in posteriors(module):
        term = posterior_kl(posterior, num_samples=num_samples)
        total = term if total is None else total + term
    if total is None:
        reference = next(module.parameters(), None)
        return torch.zeros((), dtype=reference.dtype if reference is not None else None,
                           device=reference.device if reference is not None else None)
    return total


@register_rule(GaussianPosterior, GaussianPrior)
def _gaussian_kl(posterior: GaussianPosterior, prior: GaussianPrior) -> Tensor:
    """Return the summed ``KL(N(mu, sigma^2) || N(loc, scale^2))``.

    Element-wise the KL is ``log(scale / sigma) + (sigma^2 + (mu - loc)^2) / (2 scale^2) - 1/2``,
    computed by `ops.gaussian_draw` (the pass that also draws the weight sample); a KL that pass
    recorded is reused while the parameters keep their versions.
    """
    if not _gaussian_pair(posterior, prior):
        return torch.distributions.kl_divergence(posterior.distribution, prior.distribution).sum()
    seed = torch.zeros((), dtype=torch.int64)
    if torch.compiler.is_compiling():  # no version counters nor autograd hooks to trace: computed in the graph
        return ops.gaussian_draw(posterior.mu, posterior.rho, seed, prior.loc, prior.scale, ops.KL_ONLY, True)[1]
    inputs = _gaussian_kl_inputs(posterior, prior)
    recorded = _sampling.find_kl(posterior)
    if recorded is not None and recorded.valid_for(posterior, prior, inputs):
        return recorded.value if torch.is_grad_enabled() else recorded.value.detach()
    _, kl = ops.gaussian_draw(posterior.mu, posterior.rho, seed, prior.loc, prior.scale, ops.KL_ONLY, True)
    scope = _sampling.active()
    if scope is not None:
        scope.record(posterior).kl = _sampling.KLRecord.create(kl, posterior, prior, inputs)
    return kl
