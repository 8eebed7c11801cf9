"""Closed-form KL rules per (posterior, prior) pair, dispatched most-specific-first, with a Monte Carlo fallback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import kl_divergence as distribution_kl

from torchbayesian._validation import positive_int

__all__ = ["KLRule", "find_rule", "posterior_kl", "register_rule"]

KLRule = Callable[[Any, Any], Tensor]
"""``rule(posterior, prior) -> Tensor``: the summed ``KL(q || p)`` of one pair."""

_RULES: dict[tuple[type, type], KLRule] = {}


def register_rule(posterior_type: type, prior_type: type) -> Callable[[KLRule], KLRule]:
    """Register the summed closed-form KL of a (posterior, prior) pair; it serves subclasses too.

    A subclass that overrides the ``distribution`` property of either class is not served (its KL
    may differ): `torch.distributions.kl_divergence` then decides.
    """

    def decorator(rule: KLRule) -> KLRule:
        _RULES[posterior_type, prior_type] = rule
        return rule

    return decorator


def find_rule(posterior_type: type, prior_type: type) -> KLRule | None:
    """Return the rule of the most specific registered pair that serves the two types, if any.

    Like `torch.distributions.kl_divergence`, pairs are ranked by how close each class is in the
    posterior's and the prior's MRO. Not memoised: filling a cache while ``torch.compile`` traces
    would force a recompilation.
    """
    best, best_rank = None, None
    for (q, p), rule in _RULES.items():
        if not (issubclass(posterior_type, q) and issubclass(prior_type, p)):
            continue
        if posterior_type.distribution is not q.distribution or prior_type.distribution is not p.distribution:
            continue
        rank = posterior_type.__mro__.index(q), prior_type.__mro__.index(p)
        if best_rank is None or rank < best_rank:
            best, best_rank = rule, rank
    return best


def posterior_kl(posterior: Any, *, num_samples: int | None = None) -> Tensor:
    """Return ``KL(q || prior)`` for one posterior: its pair's rule, else torch's closed form, else Monte Carlo.

    The posterior's KL hooks (see `VariationalPosterior.register_kl_hook`) see the result.
    """
    prior = posterior.prior
    if prior is None:
        raise ValueError(
            f"{type(posterior).__name__} of shape {tuple(posterior.shape)} has no prior; "
            "register it with register_posterior(..., prior=...) or set posterior.prior."
        )
    if num_samples is not None:
        positive_int("kl_divergence", "num_samples", num_samples)
    rule = find_rule(type(posterior), type(prior))
    if rule is not None:
        term = rule(posterior, prior)
    else:
        q, p = posterior.distribution, prior.distribution
        try:
            term = distribution_kl(q, p).sum()
        except NotImplementedError:
            term = _monte_carlo_kl(posterior, q, p, num_samples)
    for hook in posterior.kl_hooks():
        hook(posterior, term)
    return term


def _monte_carlo_kl(posterior: Any, q: Any, p: Any, num_samples: int | None) -> Tensor:
    if num_samples is None:
        sample = posterior.last_sample
        if sample is None:
            sample = posterior.sample_parameters()
        return q.log_prob(sample).sum() - p.log_prob(sample).sum()
    samples = torch.stack([posterior.sample_parameters() for _ in range(num_samples)])
    return (q.log_prob(samples).sum() - p.log_prob(samples).sum()) / num_samples

