"""The fused C kernels: values and gradients against torch, the generator's distribution, dispatch."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch.distributions import Normal, kl_divergence

from torchbayesian import _native, _sampling, bnn
from torchbayesian._native import gaussian as fused
from torchbayesian._native import random
from torchbayesian.kl import posterior_kl
from torchbayesian.priors.gaussian import scalar_gaussian_prior

MODES = {"sample": fused.SAMPLE, "perturbation": fused.PERTURBATION, "variance": fused.VARIANCE}


def test_kernels_build_on_this_machine() -> None:
    assert _native.unavailable_reason() is None
    assert _native.applies(torch.zeros(3))


def _reference(mode: int, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    if mode == fused.SAMPLE:
        return mu + sigma * eps
    if mode == fused.PERTURBATION:
        return sigma * eps
    return sigma.square()


# Sizes below, at and above the kernels' block (512) and sign word (64), odd and even.
@given(n=st.sampled_from([1, 2, 63, 64, 65, 511, 512, 513, 1500]), mode=st.sampled_from(sorted(MODES.values())),
       rho_low=st.floats(-12.0, 0.0), rho_high=st.floats(0.0, 25.0), loc=st.floats(-1.0, 1.0),
       scale=st.floats(0.05, 3.0), kl_grad=st.sampled_from([0.0, 0.37]))
@settings(max_examples=40, deadline=None)
def test_draw_values_kl_and_gradients_match_torch(n, mode, rho_low, rho_high, loc, scale, kl_grad) -> None:
    generator = torch.Generator().manual_seed(n)
    mu = torch.empty(n).uniform_(-1, 1, generator=generator).requires_grad_()
    rho = (rho_low + (rho_high - rho_low) * torch.rand(n, generator=generator)).requires_grad_()
    out, kl = fused.draw(mu, rho, mode, (loc, scale))
    upstream = torch.randn(n, generator=generator)
    grad_mu, grad_rho = torch.autograd.grad((out * upstream).sum() + kl_grad * kl, (mu, rho), allow_unused=True)

    mu64, rho64 = mu.detach().double().requires_grad_(), rho.detach().double().requires_grad_()
    sigma64 = F.softplus(rho64)
    # The kernel's noise, recovered from its output (exact up to rounding for these scales).
    eps = (out.detach().double() - (mu64.detach() if mode == fused.SAMPLE else 0.0)) / sigma64.detach()
    reference = _reference(mode, mu64, sigma64, eps)
    reference_kl = kl_divergence(Normal(mu64, sigma64), Normal(torch.tensor(loc).double(),
                                                               torch.tensor(scale).double())).sum()
    expected_mu, expected_rho = torch.autograd.grad(
        (reference * upstream.double()).sum() + kl_grad * reference_kl, (mu64, rho64), allow_unused=True
    )
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl.double(), reference_kl, rtol=1e-5, atol=1e-3)
    for grad, expected in ((grad_mu, expected_mu), (grad_rho, expected_rho)):
        if expected is None or not expected.any():
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)


@given(n=st.integers(1, 2000), loc=st.floats(-1.0, 1.0), scale=st.floats(0.05, 3.0))
@settings(max_examples=25, deadline=None)
def test_kl_only_kernel_matches_torch_distributions(n, loc, scale) -> None:
    mu = torch.randn(n).requires_grad_()
    rho = (torch.rand(n) * 10 - 8).requires_grad_()
    kl = fused.kl_divergence(mu, rho, (loc, scale))
    sigma = F.softplus(rho.detach().double())
    expected = kl_divergence(Normal(mu.detach().double(), sigma), Normal(loc, scale)).sum()
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-3)
    grad_mu, grad_rho = torch.autograd.grad(kl, (mu, rho))
    mu64, rho64 = mu.detach().double().requires_grad_(), rho.detach().double().requires_grad_()
    reference = kl_divergence(Normal(mu64, F.softplus(rho64)), Normal(loc, scale)).sum()
    expected_mu, expected_rho = torch.autograd.grad(reference, (mu64, rho64))
    torch.testing.assert_close(grad_mu.double(), expected_mu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_rho.double(), expected_rho, rtol=1e-4, atol=1e-6)


def test_normals_are_standard_normal_and_uncorrelated() -> None:
    torch.manual_seed(0)
    eps = random.standard_normal_like(torch.empty(400_001))
    assert stats.kstest(eps.numpy(), "norm").pvalue > 1e-3
    # Even and odd elements come from the two halves of one Box-Muller pair.
    assert stats.kstest(eps[::2].numpy(), "norm").pvalue > 1e-3
    assert stats.kstest(eps[1::2].numpy(), "norm").pvalue > 1e-3
    for lag in (1, 2, 511, 512):
        correlation = torch.corrcoef(torch.stack([eps[:-lag], eps[lag:]]))[0, 1]
        assert abs(correlation) < 0.01, lag
    assert abs(float((eps[:-1:2] ** 2 * eps[1::2] ** 2).mean()) - 1.0) < 0.02  # independent, not just uncorrelated


def test_rademacher_signs_are_balanced_and_independent() -> None:
    torch.manual_seed(0)
    signs = random.rademacher([1000, 257], torch.empty(0))
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(signs.mean())) < 0.01
    flat = signs.flatten()
    assert abs(float((flat[:-1] * flat[1:]).mean())) < 0.01
    assert abs(float((flat[:-64] * flat[64:]).mean())) < 0.01


def test_torch_manual_seed_makes_native_draws_reproducible() -> None:
    model = bnn.BayesianModule(torch.nn.Linear(40, 30))
    x = torch.randn(8, 40)
    torch.manual_seed(3)
    first = model(x)
    torch.manual_seed(3)
    again = model(x)
    different = model(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, different)


def test_bayesian_module_uses_the_fused_kernels_and_reuses_their_kl_in_a_block() -> None:
    model = bnn.BayesianModule(torch.nn.Linear(6, 4))
    posterior = model.module.parametrizations.weight[0]
    with bnn.reuse_samples():
        output = model(torch.randn(3, 6))
        kept_prior, kept_kl = _sampling.kept(posterior, "kl")
        assert kept_prior is posterior.prior
        assert posterior_kl(posterior) is kept_kl
        assert type(model.module.weight.grad_fn).__name__ == "_DrawBackward"
        kl = model.kl_divergence()
    expected = sum(kl_divergence(q.distribution, q.prior.distribution).sum() for _, q in model.posteriors())
    torch.testing.assert_close(kl, expected)
    (output.sum() + kl).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_use_torch_operations(dtype: torch.dtype) -> None:
    layer = torch.nn.Linear(5, 3).to(dtype)
    bnn.register_posterior(layer, "weight")
    assert not _native.applies(layer.parametrizations.weight[0].mu)
    assert type(layer.weight.grad_fn).__name__ != "_DrawBackward"


def test_vmap_uses_torch_random_numbers() -> None:
    def noise(x: torch.Tensor) -> torch.Tensor:
        assert not _native.applies(x)
        return random.standard_normal_like(x)

    draws = torch.vmap(noise, randomness="different")(torch.zeros(4, 100))
    assert not torch.equal(draws[0], draws[1])


def test_nan_in_rho_propagates() -> None:
    rho = torch.tensor([0.0, float("nan"), 25.0, -5.0])
    out, kl = fused.draw(torch.zeros(4), rho, fused.SAMPLE, (0.0, 1.0))
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all()
    assert torch.isnan(kl)


def test_environment_variable_disables_the_kernels_and_loading_them_keeps_denormals() -> None:
    script = (
        "import torch\n"
        "from torchbayesian import _native, bnn\n"
        "torch.set_flush_denormal(False)\n"
        "print(_native.unavailable_reason())\n"
        "model = bnn.BayesianModule(torch.nn.Linear(3, 2))\n"
        "model(torch.randn(4, 3)).sum().backward()\n"
        "print(float(torch.tensor([1e-40]) * 1.0) > 0)\n"
    )
    env = {**os.environ, "TORCHBAYESIAN_NATIVE": "0"}
    disabled = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert disabled.stdout.split() == ["disabled", "by", "TORCHBAYESIAN_NATIVE=0", "True"]
    enabled = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert enabled.stdout.split() == ["None", "True"]


def test_sample_normal_matches_the_clamped_torch_expression_and_its_gradient() -> None:
    mean = torch.randn(7, 300).requires_grad_()
    variance = (torch.rand(7, 300) * 2).requires_grad_()
    with torch.no_grad():
        variance[0, :10] = 0.0  # clamped: zero gradient, not NaN
    out = random.sample_normal(mean, variance)
    assert type(out.grad_fn).__name__ == "_SampleNormalBackward"
    upstream = torch.randn(7, 300)
    grad_mean, grad_variance = torch.autograd.grad((out * upstream).sum(), (mean, variance))
    std = variance.detach().clamp_min(torch.finfo(torch.float32).tiny).sqrt()
    eps = (out.detach() - mean.detach()) / std
    assert stats.kstest(eps[1:].flatten().numpy(), "norm").pvalue > 1e-3
    torch.testing.assert_close(grad_mean, upstream)
    expected = torch.where(variance.detach() > 0, upstream * eps / (2 * std), torch.zeros(()))
    torch.testing.assert_close(grad_variance, expected, rtol=1e-3, atol=1e-4)
    assert torch.equal(grad_variance[0, :10], torch.zeros(10))


def test_scalar_prior_parameters_follow_in_place_changes_of_the_buffers() -> None:
    prior = bnn.GaussianPrior(0.0, 1.0)
    assert scalar_gaussian_prior(prior) == (0.0, 1.0)
    prior.load_state_dict({"loc": torch.tensor(0.5), "scale": torch.tensor(2.0)})
    assert scalar_gaussian_prior(prior) == (0.5, 2.0)
    q = bnn.GaussianPosterior.from_param(torch.zeros(50))
    q.prior = prior
    expected = kl_divergence(Normal(q.mu, q.sigma), Normal(0.5, 2.0)).sum()
    torch.testing.assert_close(q.kl_divergence(), expected)
    with torch.no_grad():
        prior.scale.fill_(3.0)
    torch.testing.assert_close(q.kl_divergence(), kl_divergence(Normal(q.mu, q.sigma), Normal(0.5, 3.0)).sum())
    assert scalar_gaussian_prior(bnn.GaussianPrior(torch.zeros(3), 1.0)) is None


def test_data_term_and_kl_backpropagate_separately_with_retain_graph_or_outside_a_block() -> None:
    model = bnn.BayesianModule(torch.nn.Linear(5, 3))
    x = torch.randn(4, 5)
    with bnn.reuse_samples():
        output, kl = model(x), model.kl_divergence()
    output.sum().backward(retain_graph=True)
    kl.backward()
    together = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    output = model(x)  # the forward's own block: the KL below gets its own autograd node
    output.sum().backward()
    model.kl_divergence().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The data term's gradient in mu does not depend on the sample; in rho it does (a new sample).
    name = "module.parametrizations.weight.0."
    assert torch.allclose(model.get_parameter(name + "mu").grad, together[name + "mu"])
    assert not torch.equal(model.get_parameter(name + "rho").grad, together[name + "rho"])
