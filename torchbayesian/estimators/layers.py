"""Kernels for the torch layers: `nn.Linear`, `nn.Conv1d/2d/3d` and `nn.ConvTranspose1d/2d/3d`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from torchbayesian._native.convolution import conv2d_single_channel
from torchbayesian.estimators.registry import LayerOp, register_estimator

__all__: list[str] = []

_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@register_estimator(nn.Linear)
def _linear(layer: nn.Linear, input: Tensor) -> LayerOp:
    return LayerOp(F.linear, channel_dim=-1)


@register_estimator(nn.Conv1d)
@register_estimator(nn.Conv2d)
@register_estimator(nn.Conv3d)
def _conv(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d, input: Tensor) -> LayerOp:
    # `_conv_forward` is the layer's own map with a given weight and bias: it handles string
    # padding and pads first for padding_mode != "zeros", exactly as the layer's forward does.
    return LayerOp(layer._conv_forward, channel_dim=-1 - len(layer.kernel_size), apply_noise=_single_channel(layer))


def _single_channel(layer: nn.Conv1d | nn.Conv2d | nn.Conv3d) -> Callable[..., Tensor] | None:
    """The map with a native weight gradient, for a 2-D, one-input-channel, stride-1, zero-padded convolution."""
    if not (
        isinstance(layer, nn.Conv2d)
        and layer.in_channels == 1
        and layer.groups == 1
        and tuple(layer.stride) == (1, 1)
        and tuple(layer.dilation) == (1, 1)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    ):
        return None
    return partial(conv2d_single_channel, padding=tuple(layer.padding))


@register_estimator(nn.ConvTranspose1d)
@register_estimator(nn.ConvTranspose2d)
@register_estimator(nn.ConvTranspose3d)
def _conv_transpose(
    layer: nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d,
    input: Tensor,
    output_size: list[int] | None = None,
) -> LayerOp:
    dims = len(layer.kernel_size)
    output_padding = layer._output_padding(
        input, output_size, layer.stride, layer.padding, layer.kernel_size, dims, layer.dilation
    )
    function = _CONV_TRANSPOSE[dims]

    def apply(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return function(x, weight, bias, layer.stride, layer.padding, output_padding, layer.groups, layer.dilation)

    return LayerOp(apply, channel_dim=-1 - dims)
