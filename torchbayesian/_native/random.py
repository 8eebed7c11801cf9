"""Random tensors from the fused kernels' generator where it applies, else from torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torchbayesian._native import address, applies, library, split

__all__ = ["rademacher", "sample_normal", "seed"]


def sample_normal(mean: Tensor, variance: Tensor) -> Tensor:
    """Return ``mean + sqrt(variance) * eps`` with fresh standard normal ``eps``, differentiable in both.

    The variance is clamped below at the dtype's smallest normal number, so an exactly zero variance
    has a zero (not NaN) gradient.
    """
    if variance.shape == mean.shape and applies(mean, variance):
        return _SampleNormal.apply(mean, variance)
    std = variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt()
    return torch.addcmul(mean, std, torch.randn_like(mean))


class _SampleNormal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, mean: Tensor, variance: Tensor) -> Tensor:
        out, slope = torch.empty_like(mean), torch.empty_like(mean)
        draw_seed = seed()

        def call(index: int, offset: int, count: int) -> None:
            library().tb_local_reparameterization(
                address(mean, offset), address(variance, offset), address(out, offset), address(slope, offset), count,
                draw_seed, offset,
            )

        split(mean.numel(), call)
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        (slope,) = ctx.saved_tensors
        return grad, grad * slope if ctx.needs_input_grad[1] else None


def rademacher(shape: list[int], like: Tensor) -> Tensor:
    """Return a tensor of ``shape`` with entries -1 or +1, each with probability 1/2, in ``like``'s dtype and device."""
    if not applies(like):
        signs = torch.randint(0, 2, shape, dtype=like.dtype, device=like.device)
        return signs.mul_(2).sub_(1)
    out = torch.empty(shape, dtype=like.dtype)
    library().tb_rademacher(out.data_ptr(), out.numel(), seed(), 0)
    return out


def seed() -> int:
    """Draw a 64-bit seed from torch's default generator, so ``torch.manual_seed`` governs the kernels."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)) & (2**64 - 1)
