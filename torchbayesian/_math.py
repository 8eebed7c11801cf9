"""Numerically stable helpers shared by posteriors and priors."""

import torch
from torch import Tensor

__all__ = ["softplus_inverse"]


def softplus_inverse(value: Tensor) -> Tensor:
    """Return ``rho`` such that ``softplus(rho) == value`` for positive ``value``.

    Uses ``value + log(-expm1(-value))``, which is exact for small values and does not overflow
    for large ones.
    """
    return value + torch.log(-torch.expm1(-value))
