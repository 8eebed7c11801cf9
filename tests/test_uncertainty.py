import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchbayesian import bnn

shapes = st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(2, 6))
SETTINGS = settings(max_examples=20, deadline=None)


def _logits(shape: tuple[int, int, int], seed: int, scale: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=generator, dtype=dtype)


def _reference(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Total and expected entropy with an explicit loop over samples and classes."""
    num_samples, batch, classes = probs.shape
    total = torch.zeros(batch, dtype=probs.dtype)
    expected = torch.zeros(batch, dtype=probs.dtype)
    for b in range(batch):
        mean = [sum(probs[s, b, c].item() for s in range(num_samples)) / num_samples for c in range(classes)]
        total[b] = -sum(p * math.log(p) for p in mean if p > 0)
        expected[b] = -sum(
            probs[s, b, c].item() * math.log(probs[s, b, c].item())
            for s in range(num_samples) for c in range(classes) if probs[s, b, c] > 0
        ) / num_samples
    return total, expected


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.floats(0.1, 10.0))
def test_decomposition_matches_loop_and_is_non_negative(shape, seed, scale):
    logits = _logits(shape, seed, scale)
    probs = logits.softmax(-1)
    total, expected = _reference(probs)
    for samples, from_logits in ((logits, True), (probs, False)):
        h = bnn.entropy(samples, from_logits=from_logits)
        a = bnn.aleatoric_uncertainty(samples, from_logits=from_logits)
        e = bnn.epistemic_uncertainty(samples, from_logits=from_logits)
        torch.testing.assert_close(h, total)
        torch.testing.assert_close(a, expected)
        torch.testing.assert_close(h, a + e, atol=1e-12, rtol=0)
        assert (e >= 0).all() and (a >= 0).all()
        assert (h <= math.log(shape[-1]) + 1e-12).all()


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_modules_match_functions(shape, seed):
    logits = _logits(shape, seed, 3.0, torch.float32)
    for module, function in (
        (bnn.Entropy, bnn.entropy),
        (bnn.AleatoricUncertainty, bnn.aleatoric_uncertainty),
        (bnn.EpistemicUncertainty, bnn.epistemic_uncertainty),
        (bnn.VariationRatio, bnn.variation_ratio),
    ):
        assert torch.equal(module(from_logits=True)(logits), function(logits, from_logits=True))
        assert torch.equal(module()(logits.softmax(-1)), function(logits.softmax(-1)))


def test_one_hot_agreement_has_no_uncertainty():
    probs = torch.eye(4)[torch.tensor([2, 0, 3])].expand(5, 3, 4)
    for function in (bnn.entropy, bnn.aleatoric_uncertainty, bnn.epistemic_uncertainty, bnn.variation_ratio):
        assert torch.equal(function(probs), torch.zeros(3))


def test_confident_disagreement_is_all_epistemic():
    probs = torch.eye(3)[:, None, :].repeat(2, 1, 1)  # six one-hot draws, two per class
    torch.testing.assert_close(bnn.epistemic_uncertainty(probs), torch.tensor([math.log(3)]))
    assert torch.equal(bnn.aleatoric_uncertainty(probs), torch.zeros(1))
    torch.testing.assert_close(bnn.variation_ratio(probs), torch.tensor([2 / 3]))


def test_uniform_is_log_c_and_all_aleatoric():
    logits = torch.zeros(7, 2, 5)
    torch.testing.assert_close(bnn.entropy(logits, from_logits=True), torch.full((2,), math.log(5)))
    torch.testing.assert_close(bnn.aleatoric_uncertainty(logits, from_logits=True), torch.full((2,), math.log(5)))
    torch.testing.assert_close(bnn.epistemic_uncertainty(logits, from_logits=True), torch.zeros(2))


def test_extreme_logits_are_stable_with_finite_gradients():
    logits = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]], requires_grad=True)
    e = bnn.epistemic_uncertainty(logits, from_logits=True)
    torch.testing.assert_close(e.detach(), torch.tensor([math.log(2)]))
    e.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_zero_probabilities_count_as_zero_entropy():
    probs = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    torch.testing.assert_close(bnn.aleatoric_uncertainty(probs), torch.tensor([math.log(2) / 2]))
    torch.testing.assert_close(bnn.entropy(probs), -torch.tensor([0.75 * math.log(0.75) + 0.25 * math.log(0.25)]))


def test_variation_ratio_counts_the_mode():
    probs = torch.eye(3)[torch.tensor([0, 0, 1, 0, 2])][:, None, :]
    torch.testing.assert_close(bnn.variation_ratio(probs), torch.tensor([0.4]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"entropy: samples must have shape \[S, \*batch, C\]"):
        bnn.entropy(torch.ones(3))
    with pytest.raises(TypeError, match="epistemic_uncertainty: samples must be a floating-point Tensor"):
        bnn.epistemic_uncertainty(torch.ones(2, 3, dtype=torch.long))


@SETTINGS
@given(num_samples=st.integers(2, 8), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_gaussian_uncertainty_is_the_mixture_variance(num_samples, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_samples, batch, generator=generator, dtype=torch.float64)
    log_var = torch.randn(num_samples, batch, generator=generator, dtype=torch.float64)
    u = bnn.gaussian_uncertainty(means, log_var, log_variance=True)
    assert torch.equal(u.total, u.aleatoric + u.epistemic)
    torch.testing.assert_close(bnn.gaussian_uncertainty(means, log_var.exp()).total, u.total)
    # Monte Carlo: the variance of draws from the equally weighted mixture.
    component = torch.randint(0, num_samples, (100_000,), generator=generator)
    draws = means[component] + log_var[component].exp().sqrt() * torch.randn(100_000, batch, generator=generator,
                                                                             dtype=torch.float64)
    torch.testing.assert_close(draws.var(dim=0), u.total, rtol=0.04, atol=0.01)


def test_gaussian_uncertainty_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="means and variances must have the same shape"):
        bnn.gaussian_uncertainty(torch.zeros(3, 2), torch.ones(3, 1))
