"""Random tensors from the fused kernels' generator where it applies, else from torch."""

from __future__ import annotations

import torch
from torch import Tensor

from torchbayesian._native import applies, library

__all__ = ["rademacher", "seed", "standard_normal_like"]


def standard_normal_like(tensor: Tensor) -> Tensor:
    """Return ``torch.randn_like(tensor)``, drawn by the vectorised generator on float32 CPU tensors."""
    if not applies(tensor):
        return torch.randn_like(tensor)
    out = torch.empty_like(tensor)
    library().tb_normal(out.data_ptr(), out.numel(), seed())
    return out


def rademacher(shape: list[int], like: Tensor) -> Tensor:
    """Return a tensor of ``shape`` with entries -1 or +1, each with probability 1/2, in ``like``'s dtype and device."""
    if not applies(like):
        signs = torch.randint(0, 2, shape, dtype=like.dtype, device=like.device)
        return signs.mul_(2).sub_(1)
    out = torch.empty(shape, dtype=like.dtype)
    library().tb_rademacher(out.data_ptr(), out.numel(), seed())
    return out


def seed() -> int:
    """Draw a 64-bit seed from torch's default generator, so ``torch.manual_seed`` governs the kernels."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) & (2**64 - 1)
