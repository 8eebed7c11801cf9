"""`BayesianMixin`: the methods shared by every module that holds posteriors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchbayesian import _sampling
from torchbayesian._validation import positive_int
from torchbayesian.kl import kl_divergence
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.registration import posteriors

__all__ = ["BayesianMixin"]

if TYPE_CHECKING:
    from typing_extensions import Self


class BayesianMixin:
    """Add KL, log-density and ELBO methods to an ``nn.Module`` that holds posteriors.

    `BayesianModule`, the drop-in layers (`Linear`, `Conv2d`, `LSTM`...), `Sequential`,
    `ModuleList` and classes decorated with `bayesian` inherit these methods. Mix it into your
    own container as ``class Net(bnn.BayesianMixin, nn.Module)``.

    ``log_prior`` and ``log_variational_posterior`` are evaluated at the weights sampled in the
    latest (unfrozen) forward pass, so ``log_variational_posterior() - log_prior()`` is the
    single-sample Monte Carlo estimate of the KL divergence, whatever the prior.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(3, 1))
        >>> _ = model(torch.randn(2, 3))
        >>> estimate = model.log_variational_posterior() - model.log_prior()
        >>> bool(torch.isfinite(estimate))
        True
    """

    def posteriors(self) -> Iterator[tuple[str, VariationalPosterior]]:
        """Yield ``(qualified_name, posterior)`` for each posterior, each once."""
        return posteriors(self._as_module())

    def kl_divergence(self, *, num_samples: int | None = None) -> Tensor:
        """Return the KL divergence of all posteriors to their priors, summed; see `torchbayesian.bnn.kl_divergence`."""
        return kl_divergence(self._as_module(), num_samples=num_samples)

    def log_prior(self) -> Tensor:
        """Return $\\sum \\log p(w)$ over every posterior, at the weights sampled in the latest forward.

        Raises:
            RuntimeError: If a posterior has not been sampled yet (run an unfrozen forward first).
        """
        return self._sum_at_last_sample(lambda posterior, sample: posterior.prior.log_prob(sample))

    def log_variational_posterior(self) -> Tensor:
        """Return $\\sum \\log q(w)$ over every posterior, at the weights sampled in the latest forward.

        Raises:
            RuntimeError: If a posterior has not been sampled yet (run an unfrozen forward first).
        """
        return self._sum_at_last_sample(lambda posterior, sample: posterior.log_prob(sample))

    def sample_elbo(
        self,
        inputs: Any,
        targets: Any,
        criterion: Callable[[Any, Any], Tensor],
        num_samples: int = 1,
        kl_weight: float | Tensor = 1.0,
    ) -> Tensor:
        """Return the negative ELBO averaged over ``num_samples`` weight samples, ready for ``backward()``.

        Each sample runs ``self(inputs)`` and adds ``criterion(outputs, targets) + kl_weight * KL``,
        where KL is `kl_divergence` (closed form where the pair has one, otherwise the
        single-sample estimate at that forward's weights). Set ``kl_weight`` to ``1 / N`` when
        ``criterion`` is a per-example mean over a training set of ``N`` examples.

        Args:
            inputs (Any): Passed to ``self`` as its single positional argument.
            targets (Any): Passed to ``criterion`` as its second argument.
            criterion (Callable): Data loss, e.g. ``torch.nn.CrossEntropyLoss()``.
            num_samples (int): Number of weight samples to average over.
            kl_weight (float | Tensor): Weight of the KL term.

        Returns:
            Tensor: A scalar.

        Raises:
            ValueError: If ``num_samples`` is not a positive integer.
        """
        positive_int("sample_elbo", "num_samples", num_samples)
        model = self._as_module()
        terms = []
        for _ in range(num_samples):
            # One sampling scope per term: its forward and KL share sigma (and, on CPU, one fused kernel).
            with _sampling.fresh_samples():
                terms.append(criterion(model(inputs), targets) + kl_weight * self.kl_divergence())
        return torch.stack(terms).sum() / num_samples

    def freeze(self) -> Self:
        """Make every posterior return its mean (deterministic prediction); returns ``self``."""
        for _, posterior in self.posteriors():
            posterior.frozen = True
        return self

    def unfreeze(self) -> Self:
        """Make every posterior sample again; returns ``self``."""
        for _, posterior in self.posteriors():
            posterior.frozen = False
        return self

    def _as_module(self) -> nn.Module:
        if not isinstance(self, nn.Module):
            raise TypeError(f"BayesianMixin must be mixed into an nn.Module, got {type(self).__name__}.")
        return self

    def _sum_at_last_sample(self, term: Callable[[VariationalPosterior, Tensor], Tensor]) -> Tensor:
        total: Tensor | None = None
        for name, posterior in self.posteriors():
            sample = posterior.last_sample
            if sample is None:
                raise RuntimeError(
                    f"{name} has not been sampled yet; run an unfrozen forward pass before log_prior() "
                    "or log_variational_posterior()."
                )
            if posterior.prior is None:
                raise ValueError(f"{name} has no prior; set posterior.prior first.")
            value = term(posterior, sample)
            total = value if total is None else total + value
        if total is None:
            reference = next(self._as_module().parameters(), None)
            return torch.zeros((), dtype=reference.dtype if reference is not None else None,
                               device=reference.device if reference is not None else None)
        return total
