"""Tests for `to_bayesian` (MOPED initialisation)."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn
from torchbayesian._math import softplus_inverse


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))


def _trained(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = factory()
    model.eval()
    return model


@pytest.mark.parametrize(("factory", "shape"), [(_mlp, (5, 4)), (_cnn, (2, 1, 4, 4))])
def test_frozen_output_equals_original_exactly(factory, shape):
    net = _trained(factory)
    x = torch.randn(shape)
    expected = net(x)
    model = bnn.to_bayesian(net, delta=0.2).eval()
    with bnn.frozen(model):
        assert torch.equal(model(x), expected)
    assert not torch.equal(model(x), expected)


def test_original_model_is_left_unchanged():
    net = _trained(_mlp)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = bnn.to_bayesian(net)
    assert not bnn.is_bayesian(net)
    assert bnn.is_bayesian(model)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


@settings(max_examples=15, deadline=None)
@given(delta=st.floats(1e-3, 2.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_posterior_mean_is_weight_and_std_is_delta_abs_weight(delta, dtype):
    net = _trained(_mlp).to(dtype)
    weights = dict(net.named_parameters())
    model = bnn.to_bayesian(net, delta=delta)
    names = [name for name, _ in model.posteriors()]
    assert names == list(weights)
    for name, posterior in model.posteriors():
        w = weights[name].detach()
        assert posterior.mu.dtype == dtype
        assert torch.equal(posterior.mu, w)
        torch.testing.assert_close(posterior.sigma, delta * w.abs(), rtol=1e-4, atol=0.0)


def test_zero_weights_get_the_floor():
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight[0].zero_()
        net.bias.fill_(1e-9)
    model = bnn.to_bayesian(net, delta=0.1, min_sigma=1e-4)
    q = dict(model.posteriors())
    torch.testing.assert_close(q["weight"].sigma[0], torch.full((3,), 1e-4), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(q["weight"].sigma[1], 0.1 * net.weight[1].abs(), rtol=1e-4, atol=0.0)
    torch.testing.assert_close(q["bias"].sigma, torch.full((2,), 1e-4), rtol=1e-4, atol=0.0)
    assert torch.isfinite(q["weight"].rho).all()


def test_prior_is_centred_on_trained_weights():
    net = _trained(_mlp)
    model = bnn.to_bayesian(net, prior_scale=0.3)
    weights = dict(net.named_parameters())
    for name, posterior in model.posteriors():
        assert torch.equal(posterior.prior.loc, weights[name].detach())
        assert posterior.prior.loc.shape == weights[name].shape
        assert posterior.prior.scale.item() == pytest.approx(0.3)
    keys = set(model.state_dict())
    assert "module.0.parametrizations.weight.0.prior.loc" in keys
    assert "module.2.parametrizations.bias.0.prior.loc" in keys


def test_initial_kl_matches_independent_formula():
    net = _trained(_mlp)
    delta, scale = 0.1, 0.5
    model = bnn.to_bayesian(net, delta=delta, prior_scale=scale)
    expected = 0.0
    for p in net.parameters():
        sigma = (delta * p.detach().double().abs()).clamp_min(1e-6)
        expected += (torch.log(scale / sigma) + sigma**2 / (2 * scale**2) - 0.5).sum().item()
    assert model.kl_divergence().item() == pytest.approx(expected, rel=1e-4)


def _elbo_step(model: bnn.BayesianModule, optimizer: torch.optim.Optimizer) -> None:
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(model(x), y) + model.kl_divergence() / 100
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_trains_only_the_scales(freeze):
    torch.manual_seed(1)
    model = bnn.to_bayesian(_trained(_mlp), delta=0.1, freeze=freeze)
    mus = {name: q.mu.detach().clone() for name, q in model.posteriors()}
    rhos = {name: q.rho.detach().clone() for name, q in model.posteriors()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        _elbo_step(model, optimizer)
    for name, q in model.posteriors():
        assert q.mu.requires_grad is not freeze
        assert torch.equal(q.mu, mus[name]) is freeze
        assert not torch.equal(q.rho, rhos[name])


def test_state_dict_round_trip_into_a_different_network():
    source = bnn.to_bayesian(_trained(_mlp, seed=0), delta=0.1, prior_scale=0.2)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    other_net = _trained(_mlp, seed=1)
    target = bnn.to_bayesian(other_net, delta=0.3, prior_scale=0.7)
    before = dict(target.posteriors())["0.weight"].prior.loc.clone()
    target.load_state_dict(torch.load(buffer))
    source_posteriors = dict(source.posteriors())
    for name, q in target.posteriors():
        reference = source_posteriors[name]
        assert torch.equal(q.prior.loc, reference.prior.loc)
        assert torch.equal(q.prior.scale, reference.prior.scale)
        assert torch.equal(q.mu, reference.mu)
        assert torch.equal(q.rho, reference.rho)
    assert not torch.equal(before, dict(target.posteriors())["0.weight"].prior.loc)
    torch.testing.assert_close(target.kl_divergence(), source.kl_divergence())
    x = torch.randn(3, 4)
    with bnn.frozen(source), bnn.frozen(target):
        assert torch.equal(target(x), source(x))


def test_whole_model_pickle_round_trip():
    model = bnn.to_bayesian(_trained(_mlp), delta=0.1)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for (name, q), (_, r) in zip(model.posteriors(), loaded.posteriors()):
        assert torch.equal(q.prior.loc, r.prior.loc), name
    x = torch.randn(2, 4)
    with bnn.frozen(model), bnn.frozen(loaded):
        assert torch.equal(model(x), loaded(x))


def test_tied_weights_share_one_posterior_and_prior():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(self.embed(tokens))

    net = Tied()
    tokens = torch.tensor([[0, 3, 4]])
    model = bnn.to_bayesian(net, delta=0.1)
    assert [name for name, _ in model.posteriors()] == ["embed.weight"]
    assert bnn.is_bayesian(model.module.head, "weight")
    with bnn.frozen(model):
        assert torch.equal(model(tokens), net(tokens))


def test_include_exclude_and_normalization_layers():
    net = _trained(_cnn)
    model = bnn.to_bayesian(net, exclude="4.*")
    assert [name for name, _ in model.posteriors()] == ["0.weight", "0.bias"]
    assert not bnn.is_bayesian(model.module[1])
    only_head = bnn.to_bayesian(net, include=nn.Linear)
    assert [name for name, _ in only_head.posteriors()] == ["4.weight", "4.bias"]


def test_explicit_prior_replaces_moped_prior():
    model = bnn.to_bayesian(_trained(_mlp), prior=bnn.GaussianPrior(0.0, 2.0))
    for _, q in model.posteriors():
        assert q.prior.loc.shape == ()
        assert q.prior.loc.item() == 0.0 and q.prior.scale.item() == 2.0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"delta": 0.0}, ValueError, "delta must be a finite positive number"),
    ({"delta": math.nan}, ValueError, "delta must be a finite positive number"),
    ({"min_sigma": -1.0}, ValueError, "min_sigma must be a finite positive number"),
    ({"prior_scale": 0.0}, ValueError, "prior_scale must be positive"),
    ({"posterior": bnn.GaussianPosterior((2,))}, TypeError, "posterior must be a VariationalPosterior class"),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bnn.to_bayesian(nn.Linear(2, 2), **kwargs)


def test_rejects_non_module_and_bayesian_model():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        bnn.to_bayesian(torch.zeros(2))
    with pytest.raises(ValueError, match="already holds posteriors"):
        bnn.to_bayesian(bnn.to_bayesian(nn.Linear(2, 2)).module)


def test_rho_is_softplus_inverse_of_sigma():
    net = nn.Linear(3, 3)
    model = bnn.to_bayesian(net, delta=0.05)
    q = dict(model.posteriors())["weight"]
    expected = softplus_inverse(0.05 * net.weight.detach().double().abs()).float()
    torch.testing.assert_close(q.rho, expected)
