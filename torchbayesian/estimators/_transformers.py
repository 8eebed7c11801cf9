"""Kernel for the GPT-2 style ``transformers.pytorch_utils.Conv1D`` (a linear layer with a transposed weight)."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from torchbayesian.estimators.layer_op import LayerOp

__all__ = ["KERNELS"]


def _conv1d(layer: Conv1D, input: Tensor) -> LayerOp:
    return LayerOp(_apply, channel_dim=-1)


def _apply(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # Conv1D computes ``addmm(bias, x, weight)`` with ``weight`` of shape [in, out].
    flat = input.reshape(-1, input.shape[-1])
    output = flat @ weight if bias is None else torch.addmm(bias, flat, weight)
    return output.view(*input.shape[:-1], weight.shape[-1])


KERNELS = {Conv1D: _conv1d}
"""The kernels of this module's layers, registered by `torchbayesian.estimators.registry` once transformers is imported."""
