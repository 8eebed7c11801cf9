"""Tests for ScaleMixturePosterior."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn


def _posterior(pi=0.3, sigma1=0.5, sigma2=0.05, shape=(4,), dtype=torch.float64):
    torch.manual_seed(0)
    return bnn.ScaleMixturePosterior.from_param(
        torch.randn(shape, dtype=dtype), pi=pi, sigma1_init=sigma1, sigma2_init=sigma2
    )


def test_distribution_is_mixture_same_family_with_tensor_shape():
    q = _posterior(shape=(2, 3))
    assert isinstance(q.distribution, torch.distributions.MixtureSameFamily)
    assert q.distribution.batch_shape == (2, 3)
    assert torch.equal(q.mean, q.mu)
    torch.testing.assert_close(q.distribution.mean, q.mu)
    expected_std = math.sqrt(0.3 * 0.5**2 + 0.7 * 0.05**2)
    torch.testing.assert_close(q.distribution.stddev, torch.full((2, 3), expected_std, dtype=torch.float64))


@settings(max_examples=20, deadline=None)
@given(
    pi=st.floats(0.0, 1.0),
    sigma1=st.floats(0.01, 2.0),
    sigma2=st.floats(0.01, 2.0),
    values=st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3),
)
def test_log_prob_matches_formula(pi, sigma1, sigma2, values):
    q = _posterior(pi, sigma1, sigma2, shape=(3,))
    expected = 0.0
    for x, mu in zip(values, q.mu.tolist()):
        density = sum(
            w * math.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
            for w, s in ((pi, q.sigma1[0].item()), (1 - pi, q.sigma2[0].item()))
        )
        expected += math.log(density) if density > 0 else -math.inf
    actual = q.log_prob(torch.tensor(values, dtype=torch.float64)).item()
    if math.isinf(expected):
        assert actual < -700
    else:
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_samples_have_mixture_moments():
    torch.manual_seed(1)
    q = bnn.ScaleMixturePosterior.from_param(torch.full((40000,), 0.7, dtype=torch.float64), pi=0.3,
                                             sigma1_init=1.0, sigma2_init=0.1)
    samples = q.sample_parameters() - 0.7
    variance = 0.3 * 1.0 + 0.7 * 0.01
    fourth = 3 * (0.3 * 1.0 + 0.7 * 1e-4)
    assert samples.mean().item() == pytest.approx(0.0, abs=0.02)
    assert samples.pow(2).mean().item() == pytest.approx(variance, rel=0.03)
    assert samples.pow(4).mean().item() == pytest.approx(fourth, rel=0.08)
    assert fourth / variance**2 > 8


def test_sampling_is_reparameterised_per_component():
    torch.manual_seed(2)
    q = _posterior(pi=0.5, sigma1=1.0, sigma2=0.01, shape=(200,))
    sample = q.sample_parameters()
    sample.sum().backward()
    torch.testing.assert_close(q.mu.grad, torch.ones_like(q.mu))
    from_first = q.rho1.grad != 0
    from_second = q.rho2.grad != 0
    assert torch.equal(from_first, ~from_second)
    assert 60 < from_first.sum().item() < 140
    noise = (sample - q.mu).detach()
    torch.testing.assert_close(q.rho1.grad[from_first], (noise / q.sigma1 * torch.sigmoid(q.rho1))[from_first].detach())


def test_pi_one_samples_only_the_first_component():
    q = _posterior(pi=1.0, sigma1=0.5, sigma2=1e-3, shape=(1000,))
    q.sample_parameters().sum().backward()
    assert (q.rho2.grad == 0).all() and (q.rho1.grad != 0).all()


def test_initialisation_options():
    param = torch.randn(2, 3)
    q = bnn.ScaleMixturePosterior.from_param(param)
    assert torch.equal(q.mu, param)
    torch.testing.assert_close(q.sigma1, torch.full((2, 3), 1e-2))
    torch.testing.assert_close(q.sigma2, torch.full((2, 3), 1e-3))
    q = bnn.ScaleMixturePosterior.from_param(param, mu_init=nn.init.zeros_, rho1_init=-3.0, rho2_init=torch.full((2, 3), -6.0))
    assert (q.mu == 0).all()
    torch.testing.assert_close(q.sigma1, F.softplus(torch.full((2, 3), -3.0)))
    torch.testing.assert_close(q.sigma2, F.softplus(torch.full((2, 3), -6.0)))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"pi": 1.5}, ValueError, r"pi must be a number in \[0, 1\]"),
    ({"pi": True}, ValueError, "pi must be a number"),
    ({"sigma1_init": 0.0}, ValueError, "sigma1_init must be a finite positive number"),
    ({"sigma2_init": math.nan}, ValueError, "sigma2_init must be a finite positive number"),
    ({"rho1_init": torch.zeros(5)}, ValueError, "ScaleMixturePosterior: rho1_init has shape"),
    ({"mu_init": "zeros"}, TypeError, "ScaleMixturePosterior: mu_init must be"),
])
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        bnn.ScaleMixturePosterior.from_param(torch.zeros(2, 3), **kwargs)


def test_registered_on_a_model():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    expected = net(x)
    model = bnn.BayesianModule(net, bnn.ScaleMixturePosterior, bnn.ScaleMixturePrior(), pi=0.25)
    keys = {k for k in model.state_dict() if k.startswith("module.0.parametrizations.weight")}
    assert keys == {f"module.0.parametrizations.weight.0.{n}" for n in
                    ("mu", "rho1", "rho2", "pi", "prior.pi", "prior.sigma1", "prior.sigma2")}
    with bnn.frozen(model):
        assert torch.equal(model(x), expected)
    out = model(x)
    assert not torch.equal(out, expected)
    kl = model.kl_divergence()
    (out.sum() + kl).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_pickle_and_state_dict_round_trip():
    model = bnn.BayesianModule(nn.Linear(3, 2), bnn.ScaleMixturePosterior, pi=0.7)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    fresh = bnn.BayesianModule(nn.Linear(3, 2), bnn.ScaleMixturePosterior, pi=0.1)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(4, 3)
    for other in (loaded, fresh):
        q = dict(other.posteriors())["weight"]
        assert q.pi.item() == pytest.approx(0.7)
        with bnn.frozen(model), bnn.frozen(other):
            assert torch.equal(other(x), model(x))


def test_moped_with_scale_mixture_posterior():
    net = nn.Linear(4, 3)
    model = bnn.to_bayesian(net, delta=0.1, posterior=bnn.ScaleMixturePosterior)
    q = dict(model.posteriors())["weight"]
    torch.testing.assert_close(q.distribution.stddev, 0.1 * net.weight.detach().abs(), rtol=1e-4, atol=0.0)
    x = torch.randn(2, 4)
    with bnn.frozen(model):
        assert torch.equal(model(x), net(x))


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    pi=st.floats(0.0, 1.0),
)
def test_shapes_and_dtypes(shape, dtype, pi):
    q = bnn.ScaleMixturePosterior.from_param(torch.randn(shape, dtype=dtype), pi=pi)
    sample = q.sample_parameters()
    assert sample.shape == shape and sample.dtype == dtype
    assert q.distribution.batch_shape == shape
    log_prob = q.log_prob(sample)
    assert log_prob.dtype == dtype and log_prob.shape == () and torch.isfinite(log_prob)
    q.prior = bnn.ScaleMixturePrior().to(dtype)
    kl = q.kl_divergence(num_samples=3)
    assert kl.dtype == dtype and kl.shape == () and torch.isfinite(kl)
