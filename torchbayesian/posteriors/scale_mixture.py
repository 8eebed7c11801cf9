"""Same-location scale mixture of two Gaussians as a variational posterior."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

from torchbayesian._math import softplus_inverse
from torchbayesian._validation import positive_finite
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import Init, _initialise

__all__ = ["ScaleMixturePosterior"]


class ScaleMixturePosterior(VariationalPosterior):
    """Scale-mixture posterior $q(w) = \\pi\\,\\mathcal{N}(\\mu, \\sigma_1^2) + (1 - \\pi)\\,\\mathcal{N}(\\mu, \\sigma_2^2)$, element-wise.

    Both components share the learnable mean ``mu``; their scales $\\sigma_k = \\mathrm{softplus}(\\rho_k)$
    are learnable and the mixing weight ``pi`` is fixed. A sample draws the component
    $z \\sim \\mathrm{Bernoulli}(\\pi)$ and returns ``mu + sigma_z * eps`` with ``eps ~ N(0, 1)``:
    since ``pi`` is fixed, this is a reparameterisation and gradients reach ``mu``, ``rho1`` and
    ``rho2``. The KL divergence to any prior is estimated by Monte Carlo. The mean is ``mu``.

    Built through `from_param`, ``mu`` starts from the tensor's current values.

    Args:
        shape (torch.Size | tuple[int, ...]): Shape of the tensor.
        pi (float): Weight of the first component, in ``[0, 1]``.
        mu_init (float | Tensor | Callable): Initial mean (as in `GaussianPosterior`).
        sigma1_init (float): Initial standard deviation of the first component, used when ``rho1_init`` is ``None``.
        sigma2_init (float): Initial standard deviation of the second component, used when ``rho2_init`` is ``None``.
        rho1_init (float | Tensor | Callable | None): Initial unconstrained scale of the first component.
        rho2_init (float | Tensor | Callable | None): Initial unconstrained scale of the second component.
        dtype (torch.dtype | None): Dtype of the variational parameters.
        device (torch.device | str | None): Device of the variational parameters.

    Attributes:
        mu (nn.Parameter): Shared mean.
        rho1 (nn.Parameter): Unconstrained scale of the first component; ``sigma1 = softplus(rho1)``.
        rho2 (nn.Parameter): Unconstrained scale of the second component; ``sigma2 = softplus(rho2)``.
        pi (Tensor): Fixed weight of the first component (a buffer).

    Raises:
        ValueError: If ``pi`` is outside ``[0, 1]`` or an initial scale is not finite and positive.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> q = bnn.ScaleMixturePosterior.from_param(torch.zeros(2, 3), pi=0.3)
        >>> type(q.distribution).__name__, tuple(q.sample_parameters().shape)
        ('MixtureSameFamily', (2, 3))
    """

    pi: Tensor

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        pi: float = 0.5,
        mu_init: Init = 0.0,
        sigma1_init: float = 1e-2,
        sigma2_init: float = 1e-3,
        rho1_init: Init | None = None,
        rho2_init: Init | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(shape, dtype=dtype, device=device)
        owner = type(self).__name__
        if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0.0 <= pi <= 1.0:
            raise ValueError(f"{owner}: pi must be a number in [0, 1], got {pi!r}.")
        positive_finite(owner, "sigma1_init", sigma1_init)
        positive_finite(owner, "sigma2_init", sigma2_init)
        self.register_buffer("pi", torch.tensor(float(pi), **self._factory_kwargs))
        self.mu = nn.Parameter(torch.empty(self.shape, **self._factory_kwargs))
        self.rho1 = nn.Parameter(torch.empty(self.shape, **self._factory_kwargs))
        self.rho2 = nn.Parameter(torch.empty(self.shape, **self._factory_kwargs))
        with torch.no_grad():
            _initialise(self.mu, mu_init, "mu_init", owner)
            for rho, rho_init, sigma_init, name in (
                (self.rho1, rho1_init, sigma1_init, "rho1_init"),
                (self.rho2, rho2_init, sigma2_init, "rho2_init"),
            ):
                if rho_init is None:
                    rho.copy_(softplus_inverse(torch.tensor(float(sigma_init), dtype=torch.float64)))
                else:
                    _initialise(rho, rho_init, name, owner)

    @classmethod
    def from_param(cls, param: Tensor, **kwargs: Any) -> ScaleMixturePosterior:
        """Build a posterior whose mean is a copy of ``param`` unless ``mu_init`` is given.

        Args:
            param (Tensor): The tensor the posterior will replace.
            **kwargs: Constructor arguments.

        Returns:
            ScaleMixturePosterior: A posterior with the shape, dtype and device of ``param``.
        """
        kwargs.setdefault("mu_init", param.detach())
        return cls(param.shape, dtype=param.dtype, device=param.device, **kwargs)

    @property
    def sigma1(self) -> Tensor:
        """Standard deviation of the first component, ``softplus(rho1)``."""
        return F.softplus(self.rho1)

    @property
    def sigma2(self) -> Tensor:
        """Standard deviation of the second component, ``softplus(rho2)``."""
        return F.softplus(self.rho2)

    @property
    def mean(self) -> Tensor:
        """Posterior mean ``mu``."""
        return self.mu

    @property
    def distribution(self) -> MixtureSameFamily:
        """``MixtureSameFamily`` of ``Normal(mu, sigma1)`` and ``Normal(mu, sigma2)``, ``batch_shape == shape``."""
        weights = torch.stack([self.pi, 1 - self.pi]).expand(*self.shape, 2)
        components = Normal(
            torch.stack([self.mu, self.mu], dim=-1),
            torch.stack([self.sigma1, self.sigma2], dim=-1),
            validate_args=False,
        )
        return MixtureSameFamily(Categorical(logits=weights.log(), validate_args=False), components, validate_args=False)

    def sample_parameters(self) -> Tensor:
        """Return ``mu + sigma_z * eps`` with ``z ~ Bernoulli(pi)`` and ``eps ~ N(0, 1)``, fresh per element."""
        first = torch.rand_like(self.mu) < self.pi
        sigma = torch.where(first, self.sigma1, self.sigma2)
        return self.mu + sigma * torch.randn_like(self.mu)

    def set_mean_(self, value: Tensor) -> None:
        """Copy ``value`` into ``mu``."""
        self.mu.copy_(value)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pi={self.pi.item():g}"
