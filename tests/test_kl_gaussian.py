"""The fast summed Gaussian KL against torch.distributions and Monte Carlo."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal
from torch.distributions import kl_divergence as distribution_kl

from torchbayesian import bnn
from torchbayesian._kl_dispatch import posterior_kl
from torchbayesian._native import ops

_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def _posterior(shape, dtype, log_sigma, seed):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=generator, dtype=torch.float64)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    sigma = torch.exp(log_sigma + 0.3 * noise)
    rho = torch.log(torch.expm1(sigma))
    return bnn.GaussianPosterior(shape, mu_init=mu.to(dtype), rho_init=rho.to(dtype), dtype=dtype)


@settings(max_examples=25, deadline=None)
@given(
    shape=_shapes,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    log_sigma=st.floats(math.log(1e-4), math.log(10.0)),
    loc=st.floats(-2.0, 2.0),
    log_scale=st.floats(math.log(1e-2), math.log(10.0)),
    tensor_prior=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_kl_and_gradients_equal_torch_distributions(
    shape, dtype, log_sigma, loc, log_scale, tensor_prior, seed
):
    q = _posterior(shape, dtype, log_sigma, seed)
    if tensor_prior and shape:
        prior = bnn.GaussianPrior(torch.full(shape[-1:], loc), torch.full(shape[-1:], math.exp(log_scale)))
    else:
        prior = bnn.GaussianPrior(loc, math.exp(log_scale))
    q.prior = prior.to(dtype)
    q.prior.loc.requires_grad_()
    q.prior.scale.requires_grad_()
    leaves = [q.mu, q.rho, q.prior.loc, q.prior.scale]

    fast = posterior_kl(q)
    sigma = torch.nn.functional.softplus(q.rho)
    reference = distribution_kl(Normal(q.mu, sigma), Normal(q.prior.loc, q.prior.scale)).sum()
    tolerance = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-8}
    assert fast.dtype == dtype and fast.shape == ()
    torch.testing.assert_close(fast, reference, **tolerance)
    for got, expected in zip(torch.autograd.grad(fast, leaves), torch.autograd.grad(reference, leaves)):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize(
    "prior", [bnn.GaussianPrior(0.0, 1.0), bnn.GaussianPrior(0.5, 0.3)], ids=["standard", "shifted"]
)
def test_fast_kl_matches_monte_carlo(prior):
    torch.manual_seed(0)
    q = _posterior((3, 4), torch.float64, math.log(0.4), seed=1)
    q.prior = prior.double()
    with torch.no_grad():
        samples = q.mu + q.sigma * torch.randn(200_000, 3, 4, dtype=torch.float64)
        log_ratio = (q.distribution.log_prob(samples) - q.prior.distribution.log_prob(samples)).sum((1, 2))
        estimate, error = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
        assert abs(posterior_kl(q) - estimate) < 4 * error


@pytest.mark.parametrize("mode", [ops.SAMPLE, ops.PERTURBATION, ops.VARIANCE, ops.KL_ONLY])
def test_gaussian_draw_backward_passes_gradcheck(mode):
    torch.manual_seed(0)
    mu = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(3, 2, dtype=torch.float64).requires_grad_()
    loc = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    seed = ops.draw_seed()

    def draw(mu, rho, loc, scale):
        out, kl = ops.gaussian_draw(mu, rho, seed, loc, scale, mode, True)
        return out, kl

    assert torch.autograd.gradcheck(draw, (mu, rho, loc, scale))


def test_subclass_that_changes_the_distribution_does_not_use_the_fast_path():
    class WidePosterior(bnn.GaussianPosterior):
        @property
        def distribution(self) -> Normal:
            return Normal(self.mu, 2 * self.sigma)

    q = WidePosterior((2, 3), mu_init=0.3, sigma_init=0.5)
    q.prior = bnn.GaussianPrior(0.0, 1.0)
    expected = distribution_kl(Normal(q.mu, 2 * q.sigma), Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(posterior_kl(q), expected)
