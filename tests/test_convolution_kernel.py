"""The native weight gradient of one-input-channel 2-D convolutions, used by the estimators' second path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn
from torchbayesian._native.convolution import conv2d_single_channel
from torchbayesian.estimators import layers
from torchbayesian.estimators.registry import find_kernel


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6), out_channels=st.integers(1, 4), height=st.integers(1, 9), width=st.integers(1, 40),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)), padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
def test_gradients_match_torch_in_float64(batch, out_channels, height, width, kernel, padding) -> None:
    # Output rows of any width: shorter than, equal to and longer than one or four vectors of 8.
    if height + 2 * padding[0] < kernel[0] or width + 2 * padding[1] < kernel[1]:
        return
    generator = torch.Generator().manual_seed(batch * 1000 + width)
    x = torch.randn(batch, 1, height, width, generator=generator).requires_grad_()
    weight = torch.randn(out_channels, 1, *kernel, generator=generator).requires_grad_()
    bias = torch.randn(out_channels, generator=generator).requires_grad_()
    out = conv2d_single_channel(x, weight, bias, padding)
    upstream = torch.randn(out.shape, generator=generator)
    grads = torch.autograd.grad((out * upstream).sum(), (x, weight, bias))
    inputs64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    out64 = F.conv2d(*inputs64, padding=padding)
    torch.testing.assert_close(out.double(), out64.detach(), rtol=1e-5, atol=1e-5)
    expected = torch.autograd.grad((out64 * upstream.double()).sum(), inputs64)
    for got, reference in zip(grads, expected):
        torch.testing.assert_close(got.double(), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batched", [True, False])
def test_other_dtypes_and_unbatched_inputs_match_torch(dtype, batched) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*([2] if batched else []), 1, 5, 5, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(2, 1, 3, 3, generator=generator, dtype=dtype).requires_grad_()
    bias = torch.randn(2, generator=generator, dtype=dtype).requires_grad_()
    out = conv2d_single_channel(x, weight, bias, (1, 1))
    expected = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    for got, reference in zip(torch.autograd.grad((out * upstream).sum(), (x, weight, bias)),
                              torch.autograd.grad((expected * upstream).sum(), (x, weight, bias))):
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "uses_kernel"),
    [
        (nn.Conv2d(1, 4, 5, padding=2), True),
        (nn.Conv2d(1, 4, (3, 2), bias=False), True),
        (nn.Conv2d(2, 4, 3), False),
        (nn.Conv2d(1, 4, 3, stride=2), False),
        (nn.Conv2d(1, 4, 3, dilation=2), False),
        (nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), False),
        (nn.Conv2d(1, 4, 3, padding="same"), False),
        (nn.Conv1d(1, 4, 3), False),
    ],
)
def test_only_one_input_channel_stride_one_zero_padded_conv2d_uses_the_kernel(layer: nn.Module, uses_kernel) -> None:
    op = find_kernel(layer)(layer, torch.randn(2, layer.in_channels, 8, 8))
    assert (op.apply_noise is not None) == uses_kernel


@pytest.mark.parametrize("estimator", [bnn.FlipoutPosterior, bnn.LocalReparameterizationPosterior])
def test_estimator_gradients_are_those_of_torchs_convolution(estimator, monkeypatch) -> None:
    def gradients() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = bnn.BayesianModule(nn.Conv2d(1, 3, 5, padding=2), estimator, sigma_init=0.1)
        x = torch.rand(16, 1, 10, 10)
        with bnn.reuse_samples():
            loss = model(x).square().mean() + model.kl_divergence() / 100
        return torch.autograd.grad(loss, list(model.parameters()))

    native = gradients()
    monkeypatch.setattr(layers, "_single_channel", lambda layer: None)
    for got, expected in zip(native, gradients()):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
