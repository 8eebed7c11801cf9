"""A 2-D convolution over one input channel whose weight gradient comes from ``convolution.c`` on CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchbayesian._native import KERNELS, address
from torchbayesian._native.ops import _native

__all__ = ["conv2d_single_channel"]


@torch.library.custom_op("torchbayesian::conv2d_single_channel", mutates_args=())
def conv2d_single_channel(input: Tensor, weight: Tensor, bias: Tensor | None, padding: Sequence[int]) -> Tensor:
    """Return ``F.conv2d(input, weight, bias, padding=padding)`` for a weight of shape ``[out, 1, kh, kw]``.

    Stride and dilation are 1. For a batched float32 CPU input, with the C kernels built, the
    weight gradient is the direct sum of ``convolution.c``; otherwise every gradient is torch's.
    """
    return F.conv2d(input, weight, bias, padding=tuple(padding))


@conv2d_single_channel.register_fake
def _conv2d_single_channel_fake(input: Tensor, weight: Tensor, bias: Tensor | None, padding: Sequence[int]) -> Tensor:
    return F.conv2d(input, weight, bias, padding=tuple(padding))


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    input, weight, bias, padding = inputs
    ctx.save_for_backward(input, weight)
    ctx.padding = tuple(padding)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    unbatched = input.dim() == 3
    if unbatched:
        input, grad = input.unsqueeze(0), grad.unsqueeze(0)
    grad = grad.contiguous()
    native = need_weight and not unbatched and _native(input, weight, grad)
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad, input, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
        [need_input, need_weight and not native, False],
    )
    if native:
        grad_weight = _weight_grad(input.contiguous(), grad, weight, ctx.padding)
    grad_bias = grad.sum((0, 2, 3)) if need_bias and ctx.has_bias else None
    if unbatched and grad_input is not None:
        grad_input = grad_input.squeeze(0)
    return grad_input, grad_weight, grad_bias, None


def _weight_grad(input: Tensor, grad: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
    batch, _, h_in, w_in = input.shape
    out_channels, _, kh, kw = weight.shape
    h_out, w_out = grad.shape[-2:]
    total = torch.zeros(weight.numel(), dtype=torch.float64)
    status = KERNELS.tb_conv2d_single_channel_weight_grad(
        address(input), address(grad), total.data_ptr(), 0, batch, out_channels, h_in, w_in, h_out, w_out, kh, kw,
        *padding,
    )
    if status != 0:
        raise MemoryError("torchbayesian: out of memory in the convolution weight-gradient kernel")
    return total.to(weight.dtype).view_as(weight)


def _vmap(info: Any, in_dims: tuple[int | None, ...], input: Tensor, weight: Tensor, bias: Tensor | None,
          padding: Sequence[int]) -> tuple[Tensor, int]:
    picked = [
        [arg if dim is None or arg is None else arg.select(dim, index) for arg, dim in zip((input, weight, bias), in_dims)]
        for index in range(info.batch_size)
    ]
    return torch.stack([conv2d_single_channel(*args, padding) for args in picked]), 0


conv2d_single_channel.register_autograd(_backward, setup_context=_setup)
torch.library.register_vmap(conv2d_single_channel, _vmap)
