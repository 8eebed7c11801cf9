"""A 2-D convolution whose weight gradient comes from ``convolution.c`` for one input channel."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from torchbayesian._native import address, applies, library, run_parallel

__all__ = ["conv2d_single_channel"]

_MIN_EXAMPLES_PER_THREAD = 16


def conv2d_single_channel(input: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """Return ``F.conv2d(input, weight, bias, padding=padding)`` for a weight of shape ``[out, 1, kh, kw]``.

    Stride and dilation are 1. Where the kernels apply (float32, contiguous, CPU, a batched
    input), the weight gradient comes from the direct sum of ``convolution.c``; otherwise, and for
    the input and bias gradients, from torch.
    """
    if input.dim() == 4 and applies(input, weight):
        return _SingleChannelConv2d.apply(input, weight, bias, padding)
    return F.conv2d(input, weight, bias, padding=padding)


class _SingleChannelConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(input, weight)
        ctx.padding = padding
        return F.conv2d(input, weight, bias, padding=padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad = grad.contiguous()
        grad_input = None
        if need_input:
            grad_input = torch.ops.aten.convolution_backward(
                grad, input, weight, None, [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        grad_weight = _weight_grad(input, grad, weight, ctx.padding) if need_weight else None
        grad_bias = grad.sum((0, 2, 3)) if need_bias else None
        return grad_input, grad_weight, grad_bias, None


def _weight_grad(input: Tensor, grad: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
    batch, _, h_in, w_in = input.shape
    out_channels, _, kh, kw = weight.shape
    h_out, w_out = grad.shape[-2:]
    threads = max(1, min(torch.get_num_threads(), batch // _MIN_EXAMPLES_PER_THREAD))
    totals = torch.zeros(threads, weight.numel(), dtype=torch.float64)
    bounds = [batch * index // threads for index in range(threads + 1)]

    def call(index: int) -> None:
        status = library().tb_conv2d_single_channel_weight_grad(
            address(input), address(grad), totals[index].data_ptr(), bounds[index], bounds[index + 1],
            out_channels, h_in, w_in, h_out, w_out, kh, kw, *padding,
        )
        if status != 0:
            raise MemoryError("torchbayesian: out of memory in the convolution weight-gradient kernel")

    run_parallel(call, [(index,) for index in range(threads)])
    return totals.sum(0).to(weight.dtype).view_as(weight)
