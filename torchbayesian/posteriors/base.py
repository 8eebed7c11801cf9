"""The abstract variational posterior: a parametrization that samples a tensor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.utils.hooks import RemovableHandle

from torchbayesian import _sampling
from torchbayesian._kl_dispatch import posterior_kl
from torchbayesian.priors.base import Prior

__all__ = ["KLHook", "VariationalPosterior"]

KLHook = Callable[["VariationalPosterior", Tensor], None]
"""``hook(posterior, kl)``: see `VariationalPosterior.register_kl_hook`."""


class VariationalPosterior(nn.Module, ABC):
    """Approximate posterior over one tensor, registered as a `torch.nn.utils.parametrize` parametrization.

    Once registered on ``module.weight``, every read of ``module.weight`` calls `forward`, which
    returns a sample of the posterior (or its mean when `frozen`). The original tensor is **not
    kept**: `right_inverse` returns an empty tuple, so `parametrize` stores no ``original``
    parameter and the optimizer sees only the variational parameters. Subclasses decide how the
    original values seed the posterior in `from_param`.

    Subclasses implement `distribution` and `sample_parameters`; they may override `from_param`
    and `set_mean_`.

    Args:
        shape (torch.Size | tuple[int, ...]): Shape of the tensor the posterior replaces.
        dtype (torch.dtype | None): Dtype of the variational parameters.
        device (torch.device | str | None): Device of the variational parameters.

    Attributes:
        shape (torch.Size): Shape of every sample.
        prior (Prior | None): Prior the KL divergence is taken against; set on registration.
        frozen (bool): When ``True``, `forward` returns the posterior mean instead of a sample.
    """

    prior: Prior | None

    def __init__(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.shape = _as_shape(shape, type(self).__name__)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"{type(self).__name__}: dtype must be a floating-point torch.dtype, got {dtype!r}.")
        self._factory_kwargs: dict[str, Any] = {"dtype": dtype, "device": device}
        self.frozen = False
        self._registered = False
        self._last_sample: Tensor | None = None
        self._kl_hooks: OrderedDict[int, KLHook] = OrderedDict()
        self.register_module("prior", None)

    @classmethod
    def from_param(cls, param: Tensor, **kwargs: Any) -> VariationalPosterior:
        """Build a posterior for ``param``.

        The default uses only the tensor's shape, dtype and device; subclasses override it to
        initialise from the tensor's values.

        Args:
            param (Tensor): The tensor the posterior will replace.
            **kwargs: Passed to the constructor.

        Returns:
            VariationalPosterior: A posterior of the same shape, dtype and device as ``param``.
        """
        return cls(param.shape, dtype=param.dtype, device=param.device, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the variational parameters."""
        tensor = next(self.parameters(recurse=False), None)
        if tensor is not None:
            return tensor.dtype
        return self._factory_kwargs["dtype"] or torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """Device of the variational parameters."""
        tensor = next(self.parameters(recurse=False), None)
        if tensor is not None:
            return tensor.device
        return torch.device(self._factory_kwargs["device"] or "cpu")

    @property
    @abstractmethod
    def distribution(self) -> Distribution:
        """Element-wise distribution of the tensor, with ``batch_shape == shape``."""

    @property
    def mean(self) -> Tensor:
        """Posterior mean, returned by `forward` in frozen mode."""
        return self.distribution.mean

    @abstractmethod
    def sample_parameters(self) -> Tensor:
        """Draw a fresh reparameterised sample of the tensor (differentiable in the parameters)."""

    def forward(self) -> Tensor:
        """Return the tensor: the mean when `frozen`, otherwise a sample.

        Inside a sampling scope (`reuse_samples`, entered by `BayesianModule` on every forward) the
        sample is drawn once and reused. The latest sample is kept for single-sample KL estimates.
        """
        if self.frozen:
            return self.mean
        scope = _sampling.active()
        if scope is None:
            sample = self._draw_sample(None)
        else:
            record = scope.record(self)
            if record.sample is None:
                record.sample = self._draw_sample(record)
            sample = record.sample
        self._last_sample = sample
        return sample

    def _draw_sample(self, record: _sampling.Record | None) -> Tensor:
        """Draw the sample `forward` returns; ``record`` is the scope's record, which a subclass may fill further."""
        return self.sample_parameters()

    @property
    def last_sample(self) -> Tensor | None:
        """The sample returned by the latest unfrozen `forward`, or ``None`` before the first one."""
        return self._last_sample

    def set_mean_(self, value: Tensor) -> None:
        """Move the posterior mean to ``value`` in place (used by `load_deterministic_state_dict`).

        Raises:
            NotImplementedError: If the posterior cannot set its mean.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be assigned a value; update its parameters directly."
        )

    @classmethod
    def check_module(cls, module: nn.Module, name: str) -> None:
        """Raise if this posterior cannot be registered on ``module.<name>``; any tensor is accepted by default.

        `register_posterior` and `BayesianModule` call it before changing anything, so a refused
        registration leaves the module untouched; `BayesianModule` then uses its ``fallback``.

        Raises:
            TypeError: If the posterior does not support the module or tensor.
        """

    def on_register(self, module: nn.Module, name: str) -> None:
        """Hook run right after the posterior is registered on ``module.<name>``; does nothing by default."""

    def on_remove(self, module: nn.Module, name: str) -> None:
        """Hook run right after the posterior is removed from ``module.<name>``; does nothing by default."""

    def right_inverse(self, value: Tensor) -> tuple[()]:
        """Keep no copy of the original tensor, and refuse assignments once registered.

        Raises:
            ValueError: On ``module.<name> = value`` after registration (including
                ``torch.func.functional_call`` given the tensor's own name), which would otherwise
                overwrite the posterior silently.
        """
        if self._registered:
            raise ValueError(
                f"Cannot assign to a tensor with a {type(self).__name__} (shape {tuple(self.shape)}): it would "
                "silently replace the posterior. Move the mean with posterior.set_mean_(value) or "
                "bnn.load_deterministic_state_dict, or call bnn.remove_posterior first; with "
                "torch.func.functional_call, pass the posterior's own parameters (...mu, ...rho)."
            )
        return ()

    def log_prob(self, value: Tensor) -> Tensor:
        """Return ``log q(value)`` summed over all elements."""
        return self.distribution.log_prob(value).sum()

    def kl_divergence(self, *, num_samples: int | None = None) -> Tensor:
        """Return ``KL(q || prior)`` summed over all elements.

        Uses the closed form of the (posterior, prior) pair when one is known (this library's or
        `torch.distributions.kl_divergence`'s); otherwise a Monte Carlo estimate
        ``log q(w) - log p(w)`` at the weights of the latest forward pass (or, with
        ``num_samples``, averaged over that many fresh samples).

        Args:
            num_samples (int | None): Number of fresh samples for the Monte Carlo estimate.

        Returns:
            Tensor: A scalar with gradient to the variational parameters.

        Raises:
            ValueError: If the posterior has no prior.
        """
        return posterior_kl(self, num_samples=num_samples)

    def register_kl_hook(self, hook: KLHook) -> RemovableHandle:
        """Register ``hook(posterior, kl)``, called with every KL divergence computed for this posterior.

        Returns:
            RemovableHandle: Call ``handle.remove()`` to remove the hook.
        """
        handle = RemovableHandle(self._kl_hooks)
        self._kl_hooks[handle.id] = hook
        return handle

    def kl_hooks(self) -> Iterator[KLHook]:
        """Yield the hooks registered with `register_kl_hook`."""
        return iter(list(self.__dict__.get("_kl_hooks", {}).values()))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_last_sample"] = None
        state["_kl_hooks"] = OrderedDict()
        return state

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}, frozen={self.frozen}"


def _as_shape(shape: torch.Size | tuple[int, ...], owner: str) -> torch.Size:
    if isinstance(shape, Tensor) or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"{owner}: shape must be a tuple of ints, got {type(shape).__name__}.")
    if not all(isinstance(size, int) and not isinstance(size, bool) for size in shape):
        raise TypeError(f"{owner}: shape must be a tuple of ints, got {tuple(shape)!r}.")
    if any(size < 0 for size in shape):
        raise ValueError(f"{owner}: shape must not have negative sizes, got {tuple(shape)}.")
    return torch.Size(shape)
