import pytest
import torch
from torch import nn

from torchbayesian import bnn


def test_register_returns_the_posterior_and_removes_the_original() -> None:
    layer = nn.Linear(3, 2)
    weight = layer.weight.detach().clone()
    q = bnn.register_posterior(layer, "weight", bnn.GaussianPosterior, sigma_init=0.05)
    assert isinstance(q, bnn.GaussianPosterior) and torch.equal(q.mu, weight)
    assert "weight" not in layer._parameters
    assert [name for name, _ in layer.named_parameters()] == [
        "bias", "parametrizations.weight.0.mu", "parametrizations.weight.0.rho"]
    assert not hasattr(layer.parametrizations.weight, "original")
    assert bnn.is_bayesian(layer, "weight") and not bnn.is_bayesian(layer, "bias") and bnn.is_bayesian(layer)
    assert isinstance(q.prior, bnn.GaussianPrior)


def test_reading_the_tensor_samples_and_reuse_samples_shares_one_draw() -> None:
    layer = nn.Linear(3, 2)
    bnn.register_posterior(layer, "weight")
    assert not torch.equal(layer.weight, layer.weight)
    with bnn.reuse_samples():
        first = layer.weight
        with bnn.reuse_samples():
            assert layer.weight is first
        assert layer.weight is first
    assert layer.weight is not first


def test_assignment_and_functional_call_by_tensor_name_cannot_corrupt_the_posterior() -> None:
    layer = nn.Linear(3, 2)
    q = bnn.register_posterior(layer, "weight")
    mu = q.mu.detach().clone()
    with pytest.raises(ValueError, match=r"Cannot assign to a tensor with a GaussianPosterior \(shape \(2, 3\)\)"):
        layer.weight = torch.ones(2, 3)
    with pytest.raises(ValueError, match="pass the posterior's own parameters"):
        torch.func.functional_call(layer, {"weight": torch.zeros(2, 3)}, (torch.randn(4, 3),))
    assert torch.equal(q.mu, mu) and bnn.is_bayesian(layer, "weight")
    params = {name: torch.zeros_like(p) for name, p in layer.named_parameters()}
    params["parametrizations.weight.0.rho"] = torch.full((2, 3), -40.0)  # sigma ~ 4e-18
    out = torch.func.functional_call(layer, params, (torch.randn(4, 3),))
    assert torch.allclose(out, torch.zeros(4, 2), atol=1e-12)


def test_posterior_instance_and_custom_prior() -> None:
    layer = nn.Linear(3, 2)
    q = bnn.GaussianPosterior((2,), mu_init=0.0)
    prior = bnn.GaussianPrior(0.0, 0.1)
    assert bnn.register_posterior(layer, "bias", q, prior=prior) is q
    assert q.prior is prior


@pytest.mark.parametrize("leave", ["mean", "sample"])
def test_remove_restores_a_plain_parameter(leave: str) -> None:
    layer = nn.Linear(3, 2)
    q = bnn.register_posterior(layer, "weight")
    restored = bnn.remove_posterior(layer, "weight", leave=leave)
    assert type(layer) is nn.Linear and layer.weight is restored
    assert isinstance(restored, nn.Parameter) and restored.requires_grad
    assert restored.data_ptr() != q.mu.data_ptr()
    if leave == "mean":
        assert torch.equal(restored, q.mu)
    else:
        assert not torch.equal(restored, q.mu)
    assert not bnn.is_bayesian(layer)


def test_remove_on_a_deep_copy_leaves_the_original_intact() -> None:
    import copy

    model = bnn.BayesianModule(nn.Sequential(nn.Linear(3, 2)))
    clone = copy.deepcopy(model.module)
    bnn.remove_posterior(clone[0], "weight")
    assert bnn.is_bayesian(model.module[0], "weight")
    assert model.module[0].weight.shape == (2, 3)


def test_errors_name_module_tensor_and_expectation() -> None:
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear has no parameter 'wieght'; its parameters are: weight, bias"):
        bnn.register_posterior(layer, "wieght")
    with pytest.raises(TypeError, match=r"Linear\.weight: posterior must be a VariationalPosterior"):
        bnn.register_posterior(layer, "weight", nn.Linear)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects an nn.Module"):
        bnn.register_posterior("layer", "weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prior must be a Prior"):
        bnn.register_posterior(layer, "weight", prior=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"posterior shape does not match the tensor.\ntensor shape: \(2, 3\)"):
        bnn.register_posterior(layer, "weight", bnn.GaussianPosterior((3, 3)))
    with pytest.raises(ValueError, match="sigma_init must be a finite positive number"):
        bnn.register_posterior(layer, "weight", sigma_init=-1.0)
    assert type(layer) is nn.Linear and not bnn.is_bayesian(layer)

    bnn.register_posterior(layer, "weight")
    with pytest.raises(ValueError, match=r"Linear\.weight is already Bayesian"):
        bnn.register_posterior(layer, "weight")
    with pytest.raises(ValueError, match=r"Linear\.bias has no posterior to remove"):
        bnn.remove_posterior(layer, "bias")
    with pytest.raises(ValueError, match="leave must be 'mean' or 'sample'"):
        bnn.remove_posterior(layer, "weight", leave="max")  # type: ignore[arg-type]


def test_non_floating_and_frozen_tensors_are_rejected() -> None:
    module = nn.Module()
    module.counts = nn.Parameter(torch.ones(3, dtype=torch.int64), requires_grad=False)
    module.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    with pytest.raises(TypeError, match=r"Module\.counts has dtype torch.int64; a posterior needs a floating-point"):
        bnn.register_posterior(module, "counts")
    with pytest.raises(ValueError, match=r"Module\.frozen is frozen \(requires_grad=False\)"):
        bnn.register_posterior(module, "frozen")


def test_posteriors_yields_qualified_names() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 1)))
    bnn.register_posterior(net[1][0], "weight")
    assert [name for name, _ in bnn.posteriors(net)] == ["1.0.weight"]
