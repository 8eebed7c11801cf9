import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal

from torchbayesian import bnn
from torchbayesian._math import softplus_inverse

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64])
sigmas = st.floats(1e-4, 3.0)


@given(sigma=st.floats(1e-6, 50.0), dtype=dtypes)
@settings(max_examples=30, deadline=None)
def test_softplus_inverse_inverts_softplus(sigma: float, dtype: torch.dtype) -> None:
    value = torch.tensor(sigma, dtype=dtype)
    rho = softplus_inverse(value)
    assert torch.isfinite(rho)
    assert torch.allclose(F.softplus(rho), value, rtol=1e-4 if dtype == torch.float32 else 1e-10)
    # Independent formula, fine away from the extremes.
    if 1e-3 < sigma < 20:
        assert math.isclose(rho.item(), math.log(math.expm1(sigma)), rel_tol=1e-4, abs_tol=1e-5)


@given(shape=shapes, dtype=dtypes, sigma=sigmas)
@settings(max_examples=20, deadline=None)
def test_from_param_keeps_values_shape_dtype(shape: tuple[int, ...], dtype: torch.dtype, sigma: float) -> None:
    param = torch.randn(shape, dtype=dtype)
    q = bnn.GaussianPosterior.from_param(param, sigma_init=sigma)
    assert q.shape == param.shape and q.dtype == dtype and q.device == param.device
    assert torch.equal(q.mu, param)
    assert q.mu.data_ptr() != param.data_ptr()
    assert torch.allclose(q.sigma, torch.full_like(param, sigma), rtol=1e-4)
    assert q.distribution.batch_shape == param.shape


@given(shape=shapes, dtype=dtypes, sigma=sigmas)
@settings(max_examples=15, deadline=None)
def test_samples_match_mu_and_sigma(shape: tuple[int, ...], dtype: torch.dtype, sigma: float) -> None:
    q = bnn.GaussianPosterior(shape, mu_init=lambda t: t.normal_(), sigma_init=sigma, dtype=dtype)
    n = 4000
    samples = torch.stack([q.sample_parameters() for _ in range(n)]).detach()
    assert samples.dtype == dtype and samples.shape == (n, *shape)
    standard_error = sigma / math.sqrt(n)
    assert torch.all((samples.mean(0) - q.mu).abs() < 5 * standard_error)
    assert torch.allclose(samples.std(0), q.sigma.detach(), rtol=0.1)


def test_mu_and_rho_init_override_the_tensor() -> None:
    param = torch.randn(3, 4)
    q = bnn.GaussianPosterior.from_param(param, mu_init=0.5, rho_init=-2.0)
    assert torch.all(q.mu == 0.5)
    assert torch.allclose(q.sigma, F.softplus(torch.tensor(-2.0)).expand(3, 4))
    q = bnn.GaussianPosterior.from_param(param, mu_init=torch.nn.init.zeros_)
    assert torch.all(q.mu == 0)


def test_forward_samples_unless_frozen() -> None:
    q = bnn.GaussianPosterior.from_param(torch.randn(5))
    assert not torch.equal(q(), q())
    q.frozen = True
    assert q() is q.mu


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma_init_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="sigma_init must be a finite positive number"):
        bnn.GaussianPosterior((2,), sigma_init=bad)


def test_bad_mu_init_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"mu_init has shape \(3,\), expected \(2,\)"):
        bnn.GaussianPosterior((2,), mu_init=torch.zeros(3))


def test_distribution_is_a_normal() -> None:
    q = bnn.GaussianPosterior.from_param(torch.randn(2, 3))
    assert isinstance(q.distribution, Normal)
    assert torch.equal(q.distribution.loc, q.mu)
