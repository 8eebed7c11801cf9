"""The abstract prior: a module whose parameters are buffers."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["Prior"]


class Prior(nn.Module, ABC):
    """Prior distribution over a tensor, stored as buffers so it follows ``.to()`` and the ``state_dict``.

    A prior's `distribution` may have any batch shape that broadcasts to the tensor's shape; scalar
    priors never materialise a full-size tensor.
    """

    @property
    @abstractmethod
    def distribution(self) -> Distribution:
        """Element-wise prior distribution, broadcastable to the tensor's shape."""

    def log_prob(self, value: Tensor) -> Tensor:
        """Return ``log p(value)`` summed over all elements."""
        return self.distribution.log_prob(value).sum()


class _LocationScalePrior(Prior, ABC):
    """A prior with ``loc`` and ``scale`` buffers that broadcast together, ``scale`` positive."""

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        owner = type(self).__name__
        self.register_buffer("loc", as_buffer(loc, "loc", owner))
        self.register_buffer("scale", as_buffer(scale, "scale", owner, positive=True))
        try:
            torch.broadcast_shapes(self.loc.shape, self.scale.shape)
        except RuntimeError:
            raise ValueError(
                f"{owner}: loc and scale must broadcast together.\n"
                f"loc shape: {tuple(self.loc.shape)}\nscale shape: {tuple(self.scale.shape)}"
            ) from None

    def extra_repr(self) -> str:
        if self.loc.dim() or self.scale.dim():
            return f"loc=<tensor {tuple(self.loc.shape)}>, scale=<tensor {tuple(self.scale.shape)}>"
        return f"loc={self.loc.item():g}, scale={self.scale.item():g}"


def as_buffer(value: float | Tensor, name: str, owner: str, *, positive: bool = False) -> Tensor:
    """Convert a prior argument to a floating tensor, rejecting NaN, infinities and (optionally) non-positive values."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{owner}: {name} must be a float or a floating-point Tensor, got {type(value).__name__}.")
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{owner}: {name} must be a floating-point Tensor, got dtype {value.dtype}.")
        tensor = value.detach().clone()
    else:
        tensor = torch.tensor(float(value), dtype=torch.get_default_dtype())
    if tensor.device.type != "meta":
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{owner}: {name} must be finite, got {_describe(tensor)}.")
        if positive and not (tensor > 0).all():
            raise ValueError(f"{owner}: {name} must be positive, got {_describe(tensor)}.")
    return tensor


def _describe(tensor: Tensor) -> str:
    if tensor.numel() == 1:
        value = tensor.item()
        return repr(value) if math.isfinite(value) else str(value)
    return f"a tensor of shape {tuple(tensor.shape)} with min {tensor.min().item()}"
