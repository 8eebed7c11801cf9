"""Mean-field Gaussian posterior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from torchbayesian import _sampling
from torchbayesian._math import softplus_inverse
from torchbayesian._native import ops
from torchbayesian._validation import positive_finite
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.priors.gaussian import GaussianPrior

__all__ = ["GaussianPosterior"]

Init = float | Tensor | Callable[[Tensor], Tensor | None]


class GaussianPosterior(VariationalPosterior):
    """Fully factorised Gaussian posterior $q(w) = \\mathcal{N}(\\mu, \\sigma^2)$, $\\sigma = \\mathrm{softplus}(\\rho)$.

    Samples are ``mu + sigma * eps`` with ``eps ~ N(0, 1)`` (Blundell et al., 2015,
    "Weight Uncertainty in Neural Networks").

    Built through `from_param`, ``mu`` starts from the tensor's current values, so a layer keeps
    its own initialisation and pretrained weights stay the mean.

    Args:
        shape (torch.Size | tuple[int, ...]): Shape of the tensor.
        mu_init (float | Tensor | Callable): Initial mean: a constant, a tensor (copied), or a
            callable applied in place to the empty ``mu`` tensor (e.g. ``torch.nn.init.kaiming_uniform_``).
        sigma_init (float): Initial standard deviation, used when ``rho_init`` is ``None``.
        rho_init (float | Tensor | Callable | None): Initial unconstrained scale; overrides ``sigma_init``.
        dtype (torch.dtype | None): Dtype of ``mu`` and ``rho``.
        device (torch.device | str | None): Device of ``mu`` and ``rho``.

    Attributes:
        mu (nn.Parameter): Posterior mean.
        rho (nn.Parameter): Unconstrained scale; ``sigma = softplus(rho)``.

    Raises:
        TypeError: If ``sigma_init`` is not a number, ``dtype`` is not floating point, ``shape`` is
            not a sequence of integers, or an init has the wrong type.
        ValueError: If ``sigma_init`` is not a finite positive number, ``shape`` has a negative
            size, a tensor init has the wrong shape, the initial ``mu``/``rho`` is NaN or
            infinite, or ``sigma**2`` overflows or underflows to zero in ``dtype``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> q = bnn.GaussianPosterior.from_param(torch.zeros(2, 3), sigma_init=0.1)
        >>> q.sigma.allclose(torch.full((2, 3), 0.1))
        True
    """

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        mu_init: Init = 0.0,
        sigma_init: float = 1e-3,
        rho_init: Init | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(shape, dtype=dtype, device=device)
        if isinstance(sigma_init, bool) or not isinstance(sigma_init, (int, float)):
            raise TypeError(f"{type(self).__name__}: sigma_init must be a float, got {type(sigma_init).__name__}.")
        positive_finite(type(self).__name__, "sigma_init", sigma_init)
        self.mu = nn.Parameter(torch.empty(self.shape, **self._factory_kwargs))
        self.rho = nn.Parameter(torch.empty(self.shape, **self._factory_kwargs))
        with torch.no_grad():
            _initialise(self.mu, mu_init, "mu_init")
            if rho_init is None:
                self.rho.copy_(softplus_inverse(torch.tensor(float(sigma_init), dtype=torch.float64)))
            else:
                _initialise(self.rho, rho_init, "rho_init")
        self._check_initialised(sigma_init if rho_init is None else None)

    def _check_initialised(self, sigma_init: float | None) -> None:
        if self.mu.device.type == "meta":
            return
        source = "rho_init" if sigma_init is None else f"sigma_init={sigma_init!r}"
        with torch.no_grad():
            if not torch.isfinite(self.mu).all():
                raise ValueError(
                    f"{type(self).__name__}: the initial mean (mu_init, or the tensor's values) contains NaN or Inf; "
                    "it must be finite."
                )
            if not (torch.isfinite(self.rho).all() and torch.isfinite(self.sigma.square()).all()):
                raise ValueError(
                    f"{type(self).__name__}: {source} gives a NaN or infinite rho or sigma**2 in {self.rho.dtype}; "
                    "use a smaller, finite scale."
                )
            if not (self.sigma.square() > 0).all():
                raise ValueError(
                    f"{type(self).__name__}: {source} gives sigma**2 = 0 in {self.rho.dtype} (underflow), "
                    "so the KL divergence would be infinite; use a larger initial scale."
                )

    @classmethod
    def from_param(cls, param: Tensor, **kwargs: Any) -> GaussianPosterior:
        """Build a posterior whose mean is a copy of ``param`` unless ``mu_init`` is given.

        Args:
            param (Tensor): The tensor the posterior will replace.
            **kwargs: Constructor arguments (``mu_init``, ``sigma_init``, ``rho_init``).

        Returns:
            GaussianPosterior: A posterior with the shape, dtype and device of ``param``.
        """
        kwargs.setdefault("mu_init", param.detach())
        return cls(param.shape, dtype=param.dtype, device=param.device, **kwargs)

    @property
    def sigma(self) -> Tensor:
        """Posterior standard deviation ``softplus(rho)``, computed once per sampling scope."""
        scope = _sampling.active()
        if scope is None:
            return self._softplus_rho()
        record = scope.record(self)
        if record.sigma is None:
            record.sigma = self._softplus_rho()
        return record.sigma

    def _softplus_rho(self) -> Tensor:
        return F.softplus(self.rho)

    @property
    def mean(self) -> Tensor:
        """Posterior mean ``mu``."""
        return self.mu

    @property
    def distribution(self) -> Normal:
        """``Normal(mu, sigma)`` with ``batch_shape == shape``."""
        return Normal(self.mu, self.sigma, validate_args=False)

    def sample_parameters(self) -> Tensor:
        """Return ``mu + sigma * eps`` with fresh standard normal ``eps``."""
        return self._draw(ops.SAMPLE, None)

    def _draw_sample(self, record: _sampling.Record | None) -> Tensor:
        return self._draw(ops.SAMPLE, record)

    def _draw(self, mode: int, record: _sampling.Record | None) -> Tensor:
        """Return ``mu + sigma * eps`` (`ops.SAMPLE`), ``sigma * eps`` or ``sigma ** 2``, by ``mode``.

        With a scope ``record``, with gradient, and a `GaussianPrior`, the same pass also computes
        the closed-form KL divergence, kept in ``record`` for `kl_divergence`.
        """
        if not (_softplus_scale(type(self)) and _plain(self)):
            sigma = self.sigma
            noise = torch.randn_like(self.mu) if mode != ops.VARIANCE else None
            return {ops.SAMPLE: lambda: torch.addcmul(self.mu, sigma, noise), ops.PERTURBATION: lambda: sigma * noise,
                    ops.VARIANCE: sigma.square}[mode]()
        prior = self.prior
        # Recording needs autograd hooks and version counters, which torch.compile does not trace.
        gaussian = _gaussian_pair(self, prior)
        with_kl = record is not None and torch.is_grad_enabled() and not torch.compiler.is_compiling() and gaussian
        # The op saves ``loc`` and ``scale`` whether or not it computes the KL: they must not depend on
        # the scope. Non-reentrant activation checkpointing recomputes this draw after the scope has
        # closed (no record, so no KL) and hands the recomputed tensors to the forward's backward,
        # which computes the KL's gradient from them. Without the KL they are detached, so that a
        # learnable prior gets no (zero) gradient from a draw that did not compute the KL.
        if gaussian:
            loc, scale = (prior.loc, prior.scale) if with_kl else (prior.loc.detach(), prior.scale.detach())
        else:
            loc, scale = self.mu.new_zeros(()), self.mu.new_ones(())
        seed = ops.draw_seed() if mode != ops.VARIANCE else torch.zeros((), dtype=torch.int64)
        out, kl = ops.gaussian_draw(self.mu, self.rho, seed, loc, scale, mode, with_kl)
        if with_kl:
            record.kl = _sampling.KLRecord.create(kl, self, prior, _gaussian_kl_inputs(self, prior))
        return out

    def set_mean_(self, value: Tensor) -> None:
        """Copy ``value`` into ``mu``."""
        self.mu.copy_(value)


def _softplus_scale(cls: type[GaussianPosterior]) -> bool:
    """Whether ``cls`` keeps ``sigma = softplus(rho)``, which `ops.gaussian_draw` computes itself."""
    return cls.sigma is GaussianPosterior.sigma and cls._softplus_rho is GaussianPosterior._softplus_rho


def _plain(posterior: GaussianPosterior) -> bool:
    """Whether ``mu`` and ``rho`` are plain tensors; subclasses (FSDP's DTensor) take torch's operations."""
    return type(posterior.mu) in _PLAIN and type(posterior.rho) in _PLAIN


_PLAIN = (Tensor, nn.Parameter)


def _gaussian_pair(posterior: GaussianPosterior, prior: object) -> bool:
    """Whether the KL of ``posterior`` to ``prior`` is the closed form `ops.gaussian_draw` computes."""
    return (
        _plain(posterior)
        and isinstance(prior, GaussianPrior)
        and type(prior).distribution is GaussianPrior.distribution
        and type(posterior).distribution is GaussianPosterior.distribution
        and _softplus_scale(type(posterior))
    )


def _gaussian_kl_inputs(posterior: GaussianPosterior, prior: GaussianPrior) -> tuple[Tensor, ...]:
    """The tensors the closed-form KL of a `_gaussian_pair` reads; a recorded KL is valid while they are unchanged."""
    return posterior.mu, posterior.rho, prior.loc, prior.scale


def _initialise(tensor: Tensor, init: Init, name: str, owner: str = "GaussianPosterior") -> None:
    if callable(init):
        result = init(tensor)
        if isinstance(result, Tensor) and result is not tensor:
            tensor.copy_(result)
    elif isinstance(init, Tensor):
        if init.shape != tensor.shape and init.dim() != 0:
            raise ValueError(
                f"{owner}: {name} has shape {tuple(init.shape)}, expected {tuple(tensor.shape)} "
                "or a scalar."
            )
        tensor.copy_(init)
    elif isinstance(init, (int, float)):
        tensor.fill_(float(init))
    else:
        raise TypeError(
            f"{owner}: {name} must be a float, a Tensor or a callable, got {type(init).__name__}."
        )
