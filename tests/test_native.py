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
from torchbayesian.priors.gaussian import _scalar_gaussian_prior

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
    out, kl, mean = fused.draw(mu, rho, mode, (loc, scale))
    upstream, mean_upstream = torch.randn(2, n, generator=generator)
    # Flipout and local reparameterization read mu through the node's mean output.
    has_mean = mode in (fused.PERTURBATION, fused.VARIANCE)
    assert (mean is not None) == has_mean and (mean is None or torch.equal(mean, mu))
    mean_term = (mean * mean_upstream).sum() if has_mean else 0.0
    grad_mu, grad_rho = torch.autograd.grad(
        (out * upstream).sum() + kl_grad * kl + mean_term, (mu, rho), allow_unused=True
    )

    mu64, rho64 = mu.detach().double().requires_grad_(), rho.detach().double().requires_grad_()
    sigma64 = F.softplus(rho64)
    # The kernel's noise, recovered from its output (exact up to rounding for these scales).
    eps = (out.detach().double() - (mu64.detach() if mode == fused.SAMPLE else 0.0)) / sigma64.detach()
    reference = _reference(mode, mu64, sigma64, eps)
    reference_kl = kl_divergence(Normal(mu64, sigma64), Normal(torch.tensor(loc).double(),
                                                               torch.tensor(scale).double())).sum()
    reference_mean_term = (mu64 * mean_upstream.double()).sum() if has_mean else 0.0
    expected_mu, expected_rho = torch.autograd.grad(
        (reference * upstream.double()).sum() + kl_grad * reference_kl + reference_mean_term, (mu64, rho64),
        allow_unused=True,
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


@given(rho=st.lists(st.floats(-87.0, 60.0, width=32), min_size=1, max_size=700))
@settings(max_examples=40, deadline=None)
def test_inline_softplus_exp_and_log_match_float64_over_the_normal_range(rho) -> None:
    # From the smallest normal sigma (rho = -87) past torch's softplus threshold (20): the kernels'
    # polynomial exp, log1p and log (and the sum of logs from mantissa products) against float64.
    rho = torch.tensor(rho).requires_grad_()
    mu = torch.zeros_like(rho, requires_grad=True)
    kl = fused.kl_divergence(mu, rho, (0.0, 1.0))
    (grad_rho,) = torch.autograd.grad(kl, rho)
    rho64 = rho.detach().double().requires_grad_()
    reference = kl_divergence(Normal(torch.zeros_like(rho64), F.softplus(rho64)), Normal(0.0, 1.0)).sum()
    (expected_rho,) = torch.autograd.grad(reference, rho64)
    torch.testing.assert_close(kl.double(), reference, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad_rho.double(), expected_rho, rtol=1e-4, atol=1e-6)
    variance, _, _ = fused.draw(mu, rho, fused.VARIANCE, None)
    expected = F.softplus(rho64.detach()).square()
    normal = expected > torch.finfo(torch.float32).tiny  # sigma^2 itself is a normal float
    torch.testing.assert_close(variance.double()[normal], expected[normal], rtol=5e-6, atol=0.0)


def test_kl_of_zero_and_denormal_sigma_matches_the_log_of_torch_softplus() -> None:
    # rho = -95 gives a denormal sigma and -200 a zero one: their groups of the log sum take the
    # element-wise path, with log 0 = -inf as in torch.
    rho = torch.cat([torch.full((100,), -3.0), torch.tensor([-95.0, -99.0]), torch.full((100,), 2.0)])
    sigma = F.softplus(rho)
    assert 0 < sigma[100] < torch.finfo(torch.float32).tiny
    expected = (sigma.double().square() / 2 - sigma.double().log() - 0.5).sum()
    kl = fused.kl_divergence(torch.zeros(202), rho, (0.0, 1.0))
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-3)
    assert fused.kl_divergence(torch.zeros(3), torch.tensor([0.0, -200.0, 1.0]), (0.0, 1.0)) == float("inf")


def _normals(n: int) -> torch.Tensor:
    """The kernels' standard normals, read off a perturbation ``sigma * eps`` with ``sigma`` near 1."""
    rho = torch.full((n,), 0.5413)
    out = fused.draw(torch.zeros(n), rho, fused.PERTURBATION, None).out
    return out / F.softplus(rho)


def test_normals_are_standard_normal_and_uncorrelated() -> None:
    torch.manual_seed(0)
    eps = _normals(400_001)
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
        assert type(model.module.weight.grad_fn).__name__ == "_FusedBackward"
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
    assert type(layer.weight.grad_fn).__name__ != "_FusedBackward"


def test_vmap_uses_torch_random_numbers() -> None:
    def noise(x: torch.Tensor) -> torch.Tensor:
        assert not _native.applies(x)
        return random.sample_normal(x, torch.ones_like(x))

    draws = torch.vmap(noise, randomness="different")(torch.zeros(4, 100))
    assert not torch.equal(draws[0], draws[1])


def test_nan_in_rho_propagates() -> None:
    rho = torch.tensor([0.0, float("nan"), 25.0, -5.0])
    out, kl, _ = fused.draw(torch.zeros(4), rho, fused.SAMPLE, (0.0, 1.0))
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
    assert _scalar_gaussian_prior(prior) == (0.0, 1.0)
    prior.load_state_dict({"loc": torch.tensor(0.5), "scale": torch.tensor(2.0)})
    assert _scalar_gaussian_prior(prior) == (0.5, 2.0)
    q = bnn.GaussianPosterior.from_param(torch.zeros(50))
    q.prior = prior
    expected = kl_divergence(Normal(q.mu, q.sigma), Normal(0.5, 2.0)).sum()
    torch.testing.assert_close(q.kl_divergence(), expected)
    with torch.no_grad():
        prior.scale.fill_(3.0)
    torch.testing.assert_close(q.kl_divergence(), kl_divergence(Normal(q.mu, q.sigma), Normal(0.5, 3.0)).sum())
    assert _scalar_gaussian_prior(bnn.GaussianPrior(torch.zeros(3), 1.0)) is None


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


def _mlp_model() -> bnn.BayesianModule:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 4))
    return bnn.BayesianModule(net, prior=bnn.GaussianPrior(0.1, 0.5), sigma_init=0.05)


def _reference_gradients(model: bnn.BayesianModule, samples: dict, x: torch.Tensor, upstream: torch.Tensor) -> dict:
    """Gradients of ``(output * upstream).sum() + KL`` in float64 torch, with the kernels' noise."""
    leaves, kl, weights = {}, 0.0, {}
    for name, q in model.posteriors():
        mu = q.mu.detach().double().requires_grad_()
        rho = q.rho.detach().double().requires_grad_()
        sigma = F.softplus(rho)
        eps = (samples[name].detach().double() - mu.detach()) / sigma.detach()
        weights[name] = mu + sigma * eps
        kl = kl + kl_divergence(Normal(mu, sigma), Normal(0.1, 0.5)).sum()
        leaves[name] = (mu, rho)
    hidden = torch.tanh(F.linear(x.double(), weights["0.weight"], weights["0.bias"]))
    output = F.linear(hidden, weights["2.weight"], weights["2.bias"])
    grads = torch.autograd.grad((output * upstream.double()).sum() + kl, [t for pair in leaves.values() for t in pair])
    return {name: (grads[2 * i], grads[2 * i + 1]) for i, name in enumerate(leaves)}


def test_a_forward_draws_all_posteriors_in_one_node_with_correct_gradients() -> None:
    model = _mlp_model()
    x, upstream = torch.randn(5, 7), torch.randn(5, 4)
    with bnn.reuse_samples():
        output = model(x)
        samples = {name: q() for name, q in model.posteriors()}
        nodes = {id(sample.grad_fn) for sample in samples.values()}
        assert len(nodes) == 1 and type(next(iter(samples.values())).grad_fn).__name__ == "_FusedBackward"
        kl = model.kl_divergence()
    (output * upstream).sum().add(kl).backward()
    expected = _reference_gradients(model, samples, x, upstream)
    for name, q in model.posteriors():
        torch.testing.assert_close(q.mu.grad.double(), expected[name][0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(q.rho.grad.double(), expected[name][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", [bnn.FlipoutPosterior, bnn.LocalReparameterizationPosterior])
def test_estimators_mean_path_and_kl_gradients_in_mu_add_up_in_the_fused_node(estimator) -> None:
    # The gradient in mu of f(x; mu) + noise is the mean path's alone (noise-free): x^T upstream,
    # plus the KL's (mu - loc) / scale^2. Both reach mu through the fused node's mean output.
    torch.manual_seed(0)
    layer = torch.nn.Linear(7, 4)
    model = bnn.BayesianModule(layer, estimator, prior=bnn.GaussianPrior(0.1, 0.5), sigma_init=0.05)
    x, upstream = torch.randn(5, 7), torch.randn(5, 4)
    with bnn.reuse_samples():
        loss = (model(x) * upstream).sum() + model.kl_divergence()
    loss.backward()
    posteriors = dict(model.posteriors())
    weight, bias = posteriors["weight"], posteriors["bias"]
    for q, data in ((weight, upstream.double().T @ x.double()), (bias, upstream.double().sum(0))):
        expected = data + (q.mu.detach().double() - 0.1) / 0.25
        torch.testing.assert_close(q.mu.grad.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", [bnn.FlipoutPosterior, bnn.LocalReparameterizationPosterior])
def test_estimators_backward_writes_gradients_into_their_upstream_buffers(estimator, monkeypatch) -> None:
    # The layer's gradients in the perturbation (or variance) and the mean are fresh tensors that only
    # the fused node holds, so the node overwrites them instead of allocating mu-sized results.
    reused = []

    def recording(like: torch.Tensor, grad: torch.Tensor | None, shared: set[int]) -> torch.Tensor:
        result = buffer_for(like, grad, shared)
        reused.append(result is grad)
        return result

    buffer_for = fused._buffer_for
    monkeypatch.setattr(fused, "_buffer_for", recording)
    model = bnn.BayesianModule(torch.nn.Linear(7, 4), estimator, prior=bnn.GaussianPrior(0.0, 0.5))
    with bnn.reuse_samples():
        loss = model(torch.randn(5, 7)).square().sum() + model.kl_divergence()
    loss.backward()
    assert reused and all(reused)


def test_an_upstream_gradient_shared_by_two_outputs_is_not_overwritten() -> None:
    # (out + mean) * c sends one gradient tensor to both outputs: writing the gradient in mu into it
    # would corrupt the gradient in rho that the kernel reads from it afterwards.
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(300, generator=generator).requires_grad_()
    rho = torch.randn(300, generator=generator).sub(3).requires_grad_()
    c = torch.randn(300, generator=generator)
    out, kl, mean = fused.draw(mu, rho, fused.PERTURBATION, (0.0, 1.0))
    shared = torch.autograd.grad(((out + mean) * c).sum() + kl, (mu, rho), retain_graph=True)
    separate = torch.autograd.grad((out * c).sum() + (mean * c).sum() + kl, (mu, rho))
    for got, expected in zip(shared, separate):
        torch.testing.assert_close(got, expected)


def _transposed_twice(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().t()


def test_sole_owner_requires_no_other_reference_to_the_tensor_its_base_or_its_memory() -> None:
    fresh = torch.randn(4, 3)
    assert fused._sole_owner(fresh)
    view_of_unnamed = _transposed_twice(torch.randn(3, 4))
    assert fused._sole_owner(view_of_unnamed)  # a view whose base nothing else holds
    base = torch.randn(4, 3)
    view, _other_view = base.view(3, 4), base.view(12)
    assert not fused._sole_owner(base)  # the views hold it
    del base
    assert not fused._sole_owner(view)  # its base is also held by the other view
    other = torch.randn(4, 3)
    alias = torch.empty(0).set_(other.untyped_storage(), 0, (4, 3))
    assert not fused._sole_owner(other) and not fused._sole_owner(alias)  # memory shared outside a view


def _node_names(tensor: torch.Tensor) -> list[str]:
    names, stack, seen = [], [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_kl_outside_a_block_is_one_node_matching_torch() -> None:
    model = _mlp_model()
    kl = model.kl_divergence()
    assert _node_names(kl).count("_FusedBackward") == 1
    kl.backward()
    for _, q in model.posteriors():
        mu = q.mu.detach().double().requires_grad_()
        rho = q.rho.detach().double().requires_grad_()
        kl_divergence(Normal(mu, F.softplus(rho)), Normal(0.1, 0.5)).sum().backward()
        torch.testing.assert_close(q.mu.grad.double(), mu.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(q.rho.grad.double(), rho.grad, rtol=1e-4, atol=1e-6)
    expected = sum(kl_divergence(q.distribution, q.prior.distribution).sum() for _, q in model.posteriors())
    torch.testing.assert_close(kl, expected)


def test_frozen_and_tied_posteriors_in_the_joint_draw() -> None:
    embedding = torch.nn.Embedding(6, 4)
    decoder = torch.nn.Linear(4, 6, bias=False)
    decoder.weight = embedding.weight
    net = torch.nn.ModuleDict({"embedding": embedding, "decoder": decoder, "extra": torch.nn.Linear(4, 4)})

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.net["decoder"](self.net["extra"](self.net["embedding"](tokens)))

    model = bnn.BayesianModule(Tied())
    extra = model.module.net["extra"].parametrizations.weight[0]
    extra.frozen = True
    with bnn.reuse_samples():
        model(torch.tensor([1, 2]))
        assert torch.equal(model.module.net["embedding"].weight, model.module.net["decoder"].weight)
        assert torch.equal(model.module.net["extra"].weight, extra.mu)
        assert _sampling.kept(extra, "sample") is None


@pytest.mark.parametrize("mode", sorted(MODES.values()))
def test_splitting_between_threads_changes_no_random_number(mode: int) -> None:
    n = 3 * 65536 + 777  # three spans of whole blocks and a ragged end
    mu = torch.randn(n).requires_grad_()
    rho = (torch.rand(n) * 4 - 6).requires_grad_()
    upstream = torch.randn(n)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 4):
            torch.set_num_threads(count)
            torch.manual_seed(11)
            out, kl, _ = fused.draw(mu, rho, mode, (0.0, 1.0))
            noise = _normals(n)
            grads = torch.autograd.grad((out * upstream).sum() + kl, (mu, rho), allow_unused=True)
            results.append((out, kl, noise, grads))
    finally:
        torch.set_num_threads(threads)
    (out1, kl1, noise1, grads1), (out4, kl4, noise4, grads4) = results
    assert torch.equal(out1, out4) and torch.equal(noise1, noise4)
    torch.testing.assert_close(kl1, kl4)
    for one, four in zip(grads1, grads4, strict=True):
        assert (one is None and four is None) or torch.equal(one, four)
