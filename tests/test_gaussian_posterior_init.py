"""Tests for the ``mu_init``/``rho_init`` options of GaussianPosterior (fresh initialisation)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbayesian import bnn


def test_default_keeps_the_layer_values():
    layer = nn.Linear(3, 2)
    weight = layer.weight.detach().clone()
    q = bnn.register_posterior(layer, "weight")
    assert torch.equal(q.mu, weight)
    torch.testing.assert_close(q.sigma, torch.full((2, 3), 1e-3))


def test_constant_initialisation():
    q = bnn.GaussianPosterior.from_param(torch.randn(2, 3), mu_init=0.5, rho_init=-4.0)
    assert (q.mu == 0.5).all()
    torch.testing.assert_close(q.sigma, F.softplus(torch.full((2, 3), -4.0)))


def test_tensor_initialisation_is_copied():
    mu, rho = torch.randn(2, 3), torch.randn(2, 3)
    q = bnn.GaussianPosterior.from_param(torch.zeros(2, 3), mu_init=mu, rho_init=rho)
    assert torch.equal(q.mu, mu) and torch.equal(q.rho, rho)
    mu.add_(1.0)
    assert not torch.equal(q.mu, mu)


def test_callable_initialisation_in_place_and_returning():
    torch.manual_seed(0)
    q = bnn.GaussianPosterior.from_param(
        torch.zeros(64, 32), mu_init=nn.init.kaiming_uniform_, rho_init=lambda t: torch.full_like(t, -5.0)
    )
    bound = 1 / 32**0.5 * 3**0.5 * 2**0.5
    assert q.mu.abs().max() <= bound and q.mu.std() > 0.1
    assert (q.rho == -5.0).all()


def test_rho_init_overrides_sigma_init():
    q = bnn.GaussianPosterior.from_param(torch.zeros(3), sigma_init=0.5, rho_init=0.0)
    torch.testing.assert_close(q.sigma, torch.full((3,), F.softplus(torch.tensor(0.0)).item()))


def test_bayesian_module_forwards_fresh_initialisation():
    model = bnn.BayesianModule(nn.Linear(4, 2), mu_init=nn.init.zeros_, rho_init=-3.0)
    for _, q in model.posteriors():
        assert (q.mu == 0).all()
        torch.testing.assert_close(q.rho, torch.full_like(q.rho, -3.0))
    with bnn.frozen(model):
        assert (model(torch.randn(5, 4)) == 0).all()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"mu_init": torch.zeros(5)}, ValueError, r"mu_init has shape \(5,\), expected \(2, 3\)"),
    ({"rho_init": "small"}, TypeError, "rho_init must be a float, a Tensor or a callable"),
    ({"sigma_init": 0.0}, ValueError, "sigma_init must be a finite positive number"),
])
def test_invalid_initialisation(kwargs, error, match):
    with pytest.raises(error, match=match):
        bnn.GaussianPosterior.from_param(torch.zeros(2, 3), **kwargs)
