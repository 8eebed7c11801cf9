"""Dtypes, autocast and devices: posteriors and priors move together."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbayesian import bnn


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def _dtypes(model: nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in model.parameters()} | {t.dtype for t in model.buffers()}


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in model.parameters()} | {t.device.type for t in model.buffers()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_low_and_high_precision_models_train(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(_net().to(dtype), sigma_init=0.05)
    assert _dtypes(model) == {dtype}
    x = torch.randn(6, 4, dtype=dtype)
    y = torch.randint(0, 3, (6,))
    output = model(x)
    kl = model.kl_divergence()
    assert output.dtype == dtype
    assert kl.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)  # a summed KL needs float32's range
    assert torch.isfinite(output).all() and torch.isfinite(kl)
    for _, posterior in model.posteriors():
        sample = posterior.sample_parameters()
        assert sample.dtype == dtype and torch.isfinite(sample).all()
        torch.testing.assert_close(posterior.sigma, torch.full_like(posterior.sigma, 0.05), rtol=1e-2, atol=0)
    (F.cross_entropy(output, y) + kl / 100).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.dtype == dtype, name
        assert torch.isfinite(parameter.grad).all(), name


def test_bfloat16_kl_close_to_float32() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(_net(), sigma_init=0.05)
    reference = model.kl_divergence()
    low = copy.deepcopy(model).to(torch.bfloat16)
    torch.testing.assert_close(low.kl_divergence().float(), reference, rtol=2e-2, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_to_dtype_moves_posteriors_and_priors_together(dtype: torch.dtype) -> None:
    shared = bnn.GaussianPrior(0.0, 0.5)
    model = bnn.BayesianModule(_net(), prior=shared)
    model.to(dtype)
    assert _dtypes(model) == {dtype}
    assert shared.scale.dtype == dtype
    for _, posterior in model.posteriors():
        assert posterior.dtype == dtype
        assert posterior.prior.loc.dtype == posterior.prior.scale.dtype == dtype
    assert model.kl_divergence().dtype == (dtype if dtype == torch.float64 else torch.float32)
    model.float()
    assert _dtypes(model) == {torch.float32}


def test_autocast_bfloat16_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x)
        kl = model.kl_divergence()
        loss = F.cross_entropy(output, y) + kl / 100
    assert output.dtype == torch.bfloat16
    assert kl.dtype == torch.float32  # the KL stays in the parameters' precision
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.dtype == parameter.grad.dtype == torch.float32, name
        assert torch.isfinite(parameter.grad).all(), name
    with bnn.frozen(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
        torch.testing.assert_close(low.float(), model(x), rtol=5e-2, atol=5e-2)


def test_to_device_moves_posteriors_and_priors_together() -> None:
    model = bnn.BayesianModule(_net())
    keys = list(model.state_dict())
    model.to("meta")
    assert _devices(model) == {"meta"}
    for _, posterior in model.posteriors():
        assert posterior.device.type == posterior.prior.loc.device.type == "meta"
    output = model(torch.empty(5, 4, device="meta"))
    assert output.device.type == "meta" and output.shape == (5, 3)
    assert model.kl_divergence().device.type == "meta"
    assert list(model.state_dict()) == keys


def test_meta_model_materialised_then_converted() -> None:
    with torch.device("meta"):
        net = _net()
    net.to_empty(device="cpu")
    for module in net.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model = bnn.BayesianModule(net)
    assert _devices(model) == {"cpu"}
    assert torch.isfinite(model(torch.randn(2, 4))).all()
    assert torch.isfinite(model.kl_divergence())


def test_meta_bayesian_model_materialised_from_checkpoint() -> None:
    torch.manual_seed(0)
    trained = bnn.BayesianModule(_net(), prior=bnn.GaussianPrior(0.0, 0.3), sigma_init=0.02)
    with torch.device("meta"):
        skeleton = bnn.BayesianModule(_net(), prior=bnn.GaussianPrior(0.0, 0.3), sigma_init=0.02)
    assert _devices(skeleton) == {"meta"}
    skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(trained.state_dict())
    assert _devices(skeleton) == {"cpu"}
    x = torch.randn(3, 4)
    with bnn.frozen(trained), bnn.frozen(skeleton):
        assert torch.equal(skeleton(x), trained(x))
    assert torch.equal(skeleton.kl_divergence(), trained.kl_divergence())
