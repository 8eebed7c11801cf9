"""The library's operators: values, gradients and random numbers, with the C kernels and with torch alone.

Every test here holds with the C kernels (the default, where built) and with
``TORCHBAYESIAN_NATIVE=0`` (the torch implementation); CI runs this file both ways.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch.distributions import Normal, kl_divergence

from torchbayesian import _native, bnn
from torchbayesian._native import ops

ROOT = Path(__file__).resolve().parents[1]
MODES = [ops.SAMPLE, ops.PERTURBATION, ops.VARIANCE, ops.KL_ONLY]


def _eps(seed: torch.Tensor, n: int) -> torch.Tensor:
    """The standard normals a draw with ``seed`` uses: the perturbation at sigma = softplus(log(e - 1)) = 1."""
    one = torch.full((n,), math.log(math.e - 1))
    return ops.gaussian_draw(torch.zeros(n), one, seed, torch.tensor(0.0), torch.tensor(1.0), ops.PERTURBATION,
                             False)[0]


def test_kernels_are_loaded_exactly_when_built_and_enabled() -> None:
    built = any((ROOT / "torchbayesian" / "_native").glob("_kernels*.so"))
    if os.environ.get("TORCHBAYESIAN_NATIVE") == "0":
        assert _native.KERNELS is None and "TORCHBAYESIAN_NATIVE=0" in _native.unavailable_reason()
    elif built:
        assert _native.KERNELS is not None and _native.unavailable_reason() is None
    else:
        assert _native.KERNELS is None and "without them" in _native.unavailable_reason()


def _reference_gradients(mu, rho, loc, scale, noise, mode, grad_out, grad_kl):
    """The gradients of ``<grad_out, out> + grad_kl * KL`` in float64, from the closed forms."""
    mu, rho, noise, grad_out = (t.double() for t in (mu, rho, noise, grad_out))
    sigma, slope = F.softplus(rho), torch.sigmoid(rho)
    grad_mu = grad_kl * (mu - loc) / scale**2 + (grad_out if mode == ops.SAMPLE else 0)
    data = {ops.SAMPLE: grad_out * noise, ops.PERTURBATION: grad_out * noise, ops.VARIANCE: 2 * grad_out * sigma,
            ops.KL_ONLY: torch.zeros_like(mu)}[mode]
    grad_rho = (data + grad_kl * (sigma / scale**2 - 1 / sigma)) * slope
    return grad_mu, grad_rho


@given(n=st.sampled_from([1, 2, 63, 64, 65, 511, 512, 513, 1500]), mode=st.sampled_from(MODES),
       rho_low=st.floats(-6.0, 0.0), rho_high=st.floats(0.0, 4.0), loc=st.floats(-1.0, 1.0),
       scale=st.floats(0.1, 3.0), kl_grad=st.floats(-2.0, 2.0))
@settings(max_examples=40, deadline=None)
def test_gaussian_draw_values_kl_and_gradients_match_the_closed_forms(n, mode, rho_low, rho_high, loc, scale,
                                                                        kl_grad) -> None:
    generator = torch.Generator().manual_seed(n)
    mu = torch.randn(n, generator=generator).requires_grad_()
    rho = torch.linspace(rho_low, rho_high, n).requires_grad_()
    seed = ops.draw_seed()
    out, kl = ops.gaussian_draw(mu, rho, seed, torch.tensor(loc), torch.tensor(scale), mode, True)
    noise = _eps(seed, n)
    sigma = F.softplus(rho.detach().double())
    expected = {ops.SAMPLE: lambda: mu.detach().double() + sigma * noise.double(),
                ops.PERTURBATION: lambda: sigma * noise.double(), ops.VARIANCE: sigma.square,
                ops.KL_ONLY: lambda: torch.zeros(0, dtype=torch.float64)}[mode]()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    reference_kl = kl_divergence(Normal(mu.detach().double(), sigma), Normal(loc, scale)).sum()
    torch.testing.assert_close(kl.double(), reference_kl, rtol=1e-4, atol=1e-3)
    grad_out = torch.randn(out.shape, generator=generator)
    got = torch.autograd.grad((out * grad_out).sum() + kl_grad * kl, (mu, rho))
    if mode == ops.KL_ONLY:
        grad_out = torch.zeros(n)
    noise_used = noise if mode in (ops.SAMPLE, ops.PERTURBATION) else torch.zeros(n)
    for value, reference in zip(got, _reference_gradients(mu, rho, loc, scale, noise_used, mode, grad_out, kl_grad)):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-4)


def test_standard_normals_and_signs_have_the_right_distribution() -> None:
    torch.manual_seed(0)
    zero = torch.zeros(200_000)
    noise = _eps(ops.draw_seed(), len(zero))
    assert stats.kstest(noise.numpy(), "norm").pvalue > 1e-4
    assert abs(torch.corrcoef(torch.stack([noise[:-1], noise[1:]]))[0, 1]) < 0.02  # 9 standard errors
    signs = ops.rademacher(zero, ops.draw_seed())
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(signs.mean()) < 0.02
    assert abs((signs[:-1] * signs[1:]).mean()) < 0.02


def test_torch_manual_seed_makes_every_draw_reproducible() -> None:
    def draws() -> list[torch.Tensor]:
        torch.manual_seed(3)
        model = bnn.BayesianModule(torch.nn.Linear(5, 4), bnn.FlipoutPosterior, sigma_init=0.3)
        x = torch.randn(6, 5)
        return [model(x), model.module.weight, torch.rand(2)]

    for first, second in zip(draws(), draws()):
        assert torch.equal(first, second)


_SEED_SCRIPT = """
import json, torch
from torchbayesian import bnn
torch.manual_seed(0)
model = bnn.BayesianModule(torch.nn.Linear(3, 2), sigma_init=0.5)
sample = model.module.weight.detach().flatten().tolist()
after = torch.rand(3).tolist()
print(json.dumps({"sample": sample, "after": after}))
"""


def test_the_two_implementations_advance_torchs_generator_alike_and_differ_only_in_the_normals() -> None:
    """The documented difference: a seed gives other normals with the C kernels, nothing else changes."""
    results = {}
    for flag in ("0", "1"):
        env = {**os.environ, "TORCHBAYESIAN_NATIVE": flag, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", _SEED_SCRIPT], env=env, capture_output=True, text=True, check=True)
        results[flag] = eval(done.stdout.strip().splitlines()[-1])
    assert results["0"]["after"] == results["1"]["after"]
    if any((ROOT / "torchbayesian" / "_native").glob("_kernels*.so")):
        assert results["0"]["sample"] != results["1"]["sample"]


@pytest.mark.parametrize("mode", [ops.SAMPLE, ops.PERTURBATION])
def test_backward_error_from_recovering_the_noise_stays_within_half_an_ulp_of_the_sample(mode) -> None:
    # Large means and tiny scales: the worst case for recovering sigma * eps as out - mu in float32.
    n = 4096
    mu = torch.linspace(-100.0, 100.0, n).requires_grad_()
    rho = torch.linspace(-14.0, 2.0, n).requires_grad_()
    seed = ops.draw_seed()
    out, _ = ops.gaussian_draw(mu, rho, seed, torch.tensor(0.0), torch.tensor(1.0), mode, False)
    grad_out = torch.randn(n)
    (grad_rho,) = torch.autograd.grad(out, rho, grad_out)
    noise = _eps(seed, n).double()
    exact = grad_out.double() * noise * torch.sigmoid(rho.detach().double())
    bound = grad_out.double().abs() * torch.finfo(torch.float32).eps * out.detach().double().abs() / 2
    assert ((grad_rho.double() - exact).abs() <= bound + 1e-6 * exact.abs() + 1e-30).all()


@pytest.mark.parametrize("mode", [ops.SAMPLE, ops.PERTURBATION])
def test_learnable_prior_gets_the_gradients_of_the_noise_the_forward_drew(mode) -> None:
    # A prior whose loc and scale need gradients used to send the backward pass to the torch
    # implementation, which drew other noise than the kernel's forward: grad_rho was wrong.
    n = 1500
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(n, generator=generator).requires_grad_()
    rho = torch.linspace(-4.0, 1.0, n).requires_grad_()
    loc, scale = torch.tensor(0.3, requires_grad=True), torch.tensor(0.8, requires_grad=True)
    seed = ops.draw_seed()
    out, kl = ops.gaussian_draw(mu, rho, seed, loc, scale, mode, True)
    grad_out, kl_grad = torch.randn(n, generator=generator), 0.7
    got = torch.autograd.grad((out * grad_out).sum() + kl_grad * kl, (mu, rho, loc, scale))
    noise = _eps(seed, n)
    for value, reference in zip(got, _reference_gradients(mu, rho, 0.3, 0.8, noise, mode, grad_out, kl_grad)):
        torch.testing.assert_close(value.double(), reference, rtol=1e-4, atol=1e-4)
    sigma, deviation = F.softplus(rho.detach().double()), mu.detach().double() - 0.3
    expected_loc = -kl_grad * deviation.sum() / 0.8**2
    expected_scale = kl_grad * (n / 0.8 - (sigma.square() + deviation.square()).sum() / 0.8**3)
    torch.testing.assert_close(got[2].double(), expected_loc, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[3].double(), expected_scale, rtol=1e-4, atol=1e-3)


def test_nan_in_rho_propagates_and_low_precision_kl_does_not_overflow() -> None:
    mu, rho = torch.zeros(4), torch.tensor([0.0, float("nan"), 1.0, 2.0])
    out, kl = ops.gaussian_draw(mu, rho, ops.draw_seed(), torch.tensor(0.0), torch.tensor(1.0), ops.SAMPLE, True)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2, 3]]).all() and torch.isnan(kl)
    # float16 sigma = 34, mu = 99 over 1000 elements: a KL of about 5e6, beyond float16's 65504.
    q = bnn.GaussianPosterior((1000,), mu_init=99.0, sigma_init=34.0, dtype=torch.float16)
    q.prior = bnn.GaussianPrior().half()
    kl = q.kl_divergence()
    expected = 1000 * (math.log(1 / 34.0) + (34.0**2 + 99.0**2) / 2 - 0.5)
    assert kl.dtype == torch.float32 and math.isclose(kl.item(), expected, rel_tol=1e-3)


def test_local_reparameterization_matches_the_clamped_expression_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(600, generator=generator).requires_grad_()
    variance = torch.rand(600, generator=generator).index_fill_(0, torch.tensor([0, 5]), 0.0).requires_grad_()
    out, _ = ops.local_reparameterization(mean, variance, ops.draw_seed())
    std = variance.detach().clamp_min(torch.finfo(torch.float32).tiny).sqrt()
    eps = (out.detach() - mean.detach()) / std
    assert stats.kstest(eps[variance.detach() > 0.01].numpy(), "norm").pvalue > 1e-4
    grad_mean, grad_variance = torch.autograd.grad(out.sum(), (mean, variance))
    assert torch.equal(grad_mean, torch.ones(600))
    expected = torch.where(variance.detach() > 0, 0.5 * eps / std, torch.zeros(600))
    torch.testing.assert_close(grad_variance, expected, rtol=1e-4, atol=1e-4)
    assert grad_variance[0] == 0 and torch.isfinite(grad_variance).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_sample_and_backpropagate(dtype: torch.dtype) -> None:
    model = bnn.BayesianModule(torch.nn.Linear(4, 3).to(dtype))
    loss = model(torch.randn(2, 4, dtype=dtype)).sum() + model.kl_divergence()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
               for p in model.parameters())


def test_ops_work_under_torch_compile_vmap_and_meta_tensors() -> None:
    mu, rho = torch.zeros(3, 2), torch.full((3, 2), -1.0)
    loc, scale = torch.tensor(0.0), torch.tensor(1.0)
    for op, args in ((ops.gaussian_draw, (mu, rho, ops.draw_seed(), loc, scale, ops.SAMPLE, True)),
                     (ops.local_reparameterization, (mu, rho.exp(), ops.draw_seed())),
                     (ops.rademacher, (mu, ops.draw_seed())),
                     (ops.gaussian_draw_backward, (mu, rho, ops.draw_seed(), mu, loc, scale, mu, loc, ops.SAMPLE, True))):
        torch.library.opcheck(op, args)
    seeds = torch.stack([ops.draw_seed() for _ in range(4)])
    batched = torch.vmap(lambda seed: ops.gaussian_draw(mu, rho, seed, loc, scale, ops.SAMPLE, False)[0])(seeds)
    assert batched.shape == (4, 3, 2) and not torch.equal(batched[0], batched[1])
    meta = ops.gaussian_draw(mu.to("meta"), rho.to("meta"), ops.draw_seed(), loc, scale, ops.SAMPLE, True)
    assert meta[0].shape == (3, 2) and meta[1].shape == ()


def test_loading_the_kernels_keeps_denormals_and_runs_no_compiler() -> None:
    script = (
        "import os, torch; os.environ['PATH'] = ''\n"
        "from torchbayesian import bnn\n"
        "model = bnn.BayesianModule(torch.nn.Linear(3, 3)); model(torch.randn(2, 3)).sum().backward()\n"
        "assert torch.tensor(1e-40) != 0, 'denormals flushed'\n"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CC": "/nonexistent-compiler"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_in_place_changes_of_the_prior_and_the_parameters_are_followed() -> None:
    model = bnn.BayesianModule(torch.nn.Linear(3, 2), prior=bnn.GaussianPrior(0.0, 1.0))
    model(torch.randn(1, 3))
    q = model.module.parametrizations.weight[0]
    assert q.kl_divergence() is q.kl_divergence()  # the forward's KL, reused while nothing changed
    with torch.no_grad():
        q.prior.scale.fill_(2.0)
    second = model.kl_divergence()
    expected = sum(kl_divergence(p.distribution, Normal(0.0, 2.0)).sum() for _, p in model.posteriors())
    torch.testing.assert_close(second.detach(), expected.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        q.mu.add_(1.0)
    assert not torch.allclose(model.kl_divergence(), second)


@pytest.mark.parametrize("threads", [2, 3])
def test_large_tensors_give_the_same_numbers_on_any_number_of_threads(threads) -> None:
    n = 5 * 65536 + 77  # one span per thread (at least 8,192 elements each), the last one short
    generator = torch.Generator().manual_seed(3)
    mu, rho = torch.randn(n, generator=generator), torch.randn(n, generator=generator) - 2
    seed, loc, scale = torch.tensor(11), torch.tensor(0.1), torch.tensor(0.7)

    def run() -> list[torch.Tensor]:
        m, r = mu.clone().requires_grad_(), rho.clone().requires_grad_()
        out, kl = ops.gaussian_draw(m, r, seed, loc, scale, ops.SAMPLE, True)
        (0.3 * out.sum() + kl).backward()
        return [out, kl, m.grad, r.grad, *ops.local_reparameterization(mu, rho.exp(), seed)]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(threads)
        several = run()
    finally:
        torch.set_num_threads(before)
    for name, single, split in zip(["out", "kl", "grad_mu", "grad_rho", "lrt", "slope"], one, several, strict=True):
        if _native.KERNELS is not None:
            assert torch.equal(single, split), name
        else:  # torch splits its vectorised and scalar loops by thread, which may change the last bit
            torch.testing.assert_close(single, split, rtol=1e-5, atol=1e-6,
                                       msg=lambda message, name=name: f"{name}: {message}")


def test_empty_tensors_draw_nothing_and_have_zero_kl() -> None:
    mu, rho = torch.zeros(0, requires_grad=True), torch.zeros(0, requires_grad=True)
    out, kl = ops.gaussian_draw(mu, rho, torch.tensor(1), torch.tensor(0.0), torch.tensor(1.0), ops.SAMPLE, True)
    (out.sum() + kl).backward()
    assert out.shape == mu.grad.shape == rho.grad.shape == (0,) and kl.item() == 0.0
    assert ops.local_reparameterization(torch.zeros(0), torch.ones(0), torch.tensor(2))[0].shape == (0,)
