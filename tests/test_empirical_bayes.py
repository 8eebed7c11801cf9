import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torch import nn
from torch.distributions import Normal, kl_divergence

from torchbayesian import bnn


def _reference_kl(posterior: bnn.VariationalPosterior, loc: torch.Tensor, scale: torch.Tensor) -> float:
    """KL from torch.distributions, independent of the library's closed forms and kernels."""
    q = Normal(posterior.mu.detach().double(), posterior.sigma.detach().double())
    return kl_divergence(q, Normal(loc.double().expand_as(q.loc), scale.double().expand_as(q.loc))).sum().item()


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, posterior in bnn.posteriors(model):
            posterior.mu.copy_(torch.randn(posterior.mu.shape, generator=generator) * 0.3)
            posterior.rho.copy_(torch.randn(posterior.rho.shape, generator=generator) - 3)
    return model


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    loc=st.floats(-1.0, 1.0),
    mu_scale=st.floats(1e-3, 3.0),
    rho_shift=st.floats(-6.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_fitted_scale_minimises_the_kl_numerically(shape, loc, mu_scale, rho_shift, seed):
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(1, 1)
    layer.weight = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    bnn.register_posterior(layer, "weight", bnn.GaussianPosterior, prior=bnn.GaussianPrior(loc, 1.0))
    posterior = layer.parametrizations.weight[0]
    with torch.no_grad():
        posterior.mu.copy_(torch.randn(shape, generator=generator, dtype=torch.float64) * mu_scale)
        posterior.rho.copy_(torch.randn(shape, generator=generator, dtype=torch.float64) + rho_shift)
    prior_loc = posterior.prior.loc.clone()

    def kl_at(log_scale: float) -> float:
        return _reference_kl(posterior, prior_loc, torch.tensor(math.exp(log_scale)))

    numerical = math.exp(minimize_scalar(kl_at, bounds=(-15.0, 5.0), method="bounded",
                                         options={"xatol": 1e-10}).x)
    fitted = bnn.fit_prior_scale_(layer)["weight"].item()
    assert fitted == pytest.approx(numerical, rel=1e-4)
    assert posterior.prior.scale.item() == fitted
    assert posterior.prior.loc.item() == prior_loc.item()  # loc is kept
    assert kl_at(math.log(fitted)) <= min(kl_at(math.log(fitted * 1.01)), kl_at(math.log(fitted / 1.01)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kl_after_the_update_uses_the_new_scale(dtype):
    """Every KL path (fused kernels for float32, the closed form, the KL kept from a forward pass) sees the fit."""
    torch.manual_seed(0)
    model = _randomised(bnn.BayesianModule(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(dtype)), 1)
    x = torch.randn(4, 5, dtype=dtype)
    bnn.ELBOLoss(nn.MSELoss(), kl_weight=0.1)(model(x), torch.zeros(4, 3, dtype=dtype), kl=model)
    before = bnn.kl_divergence(model).item()

    fitted = bnn.fit_prior_scale_(model)
    assert set(fitted) == {"module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"}
    expected = sum(_reference_kl(p, p.prior.loc, p.prior.scale) for _, p in bnn.posteriors(model))
    for name, posterior in bnn.posteriors(model):
        assert posterior.prior.scale.item() == pytest.approx(fitted[name].item())
        assert posterior.prior.scale.item() < 0.5  # moved away from the standard normal prior
        assert posterior.kl_divergence().item() == pytest.approx(_reference_kl(posterior, posterior.prior.loc, posterior.prior.scale), rel=1e-4)
    assert bnn.kl_divergence(model).item() == pytest.approx(expected, rel=1e-4)
    assert bnn.kl_divergence(model).item() < before
    loss = bnn.ELBOLoss(nn.MSELoss(), kl_weight=0.1)
    loss(model(x), torch.zeros(4, 3, dtype=dtype), kl=model)
    assert loss.last_kl.item() == pytest.approx(expected, rel=1e-4)


def test_a_shared_prior_is_fitted_to_the_pooled_tensors():
    shared = bnn.GaussianPrior(0.0, 1.0)
    model = _randomised(bnn.BayesianModule(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), prior=shared), 2)
    found = list(bnn.posteriors(model))
    assert all(p.prior is shared for _, p in found)
    fitted = bnn.fit_prior_scale_(model)
    squares = sum((p.sigma.detach().square() + p.mu.detach().square()).sum() for _, p in found)
    count = sum(p.mu.numel() for _, p in found)
    assert list(fitted) == [found[0][0]]
    assert shared.scale.item() == pytest.approx(math.sqrt(squares.item() / count), rel=1e-5)


def test_a_tensor_scale_is_fitted_per_prior_element():
    layer = nn.Linear(6, 3)
    scale = torch.ones(3, 1)  # one prior scale per output row
    bnn.register_posterior(layer, "weight", bnn.GaussianPosterior, prior=bnn.GaussianPrior(0.5, scale))
    posterior = layer.parametrizations.weight[0]
    _randomised(layer, 3)
    bnn.fit_prior_scale_(layer)
    rows = (posterior.sigma.detach().square() + (posterior.mu.detach() - 0.5).square()).mean(1, keepdim=True)
    torch.testing.assert_close(posterior.prior.scale, rows.sqrt())


def test_min_scale_bounds_a_collapsed_posterior():
    layer = nn.Linear(2, 2, bias=False)
    bnn.register_posterior(layer, "weight", bnn.GaussianPosterior, sigma_init=1e-8)
    with torch.no_grad():
        layer.parametrizations.weight[0].mu.zero_()
    assert bnn.fit_prior_scale_(layer, min_scale=1e-3)["weight"].item() == pytest.approx(1e-3)


def test_other_priors_are_left_unchanged():
    model = bnn.BayesianModule(nn.Linear(3, 2), prior={"weight": bnn.LaplacePrior(0.0, 1.0)})
    fitted = bnn.fit_prior_scale_(model)
    assert list(fitted) == ["module.bias"]
    weight_prior = dict(bnn.posteriors(model))["module.weight"].prior
    assert weight_prior.scale.item() == 1.0


def test_the_fit_is_saved_with_the_state_dict():
    model = _randomised(bnn.BayesianModule(nn.Linear(3, 2)), 4)
    bnn.fit_prior_scale_(model)
    copy = bnn.BayesianModule(nn.Linear(3, 2))
    copy.load_state_dict(model.state_dict())
    for (_, a), (_, b) in zip(bnn.posteriors(model), bnn.posteriors(copy), strict=True):
        assert a.prior.scale.item() == b.prior.scale.item() != 1.0


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="fit_prior_scale_ expects an nn.Module"):
        bnn.fit_prior_scale_(torch.zeros(2))
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="min_scale must be a finite positive number"):
            bnn.fit_prior_scale_(nn.Linear(2, 2), min_scale=bad)
