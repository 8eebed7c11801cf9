import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from tests.models import TiedLanguageModel, mlp
from torchbayesian import bnn

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


def _posterior(shape: tuple[int, ...], dtype: torch.dtype, sigma: float, prior: bnn.Prior) -> bnn.GaussianPosterior:
    q = bnn.GaussianPosterior(shape, mu_init=lambda t: t.normal_(), sigma_init=sigma, dtype=dtype)
    q.prior = prior.to(dtype)
    return q


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]), sigma=st.floats(1e-3, 3.0),
       loc=st.floats(-2, 2), scale=st.floats(0.05, 5.0))
@settings(max_examples=25, deadline=None)
def test_closed_form_kl_matches_torch_distributions(shape, dtype, sigma, loc, scale) -> None:
    q = _posterior(shape, dtype, sigma, bnn.GaussianPrior(loc, scale))
    expected = kl_divergence(Normal(q.mu, q.sigma), Normal(torch.full(shape, loc, dtype=dtype),
                                                           torch.full(shape, scale, dtype=dtype))).sum()
    kl = q.kl_divergence()
    assert kl.dtype == dtype and kl.shape == ()
    assert torch.allclose(kl, expected, rtol=1e-4)
    assert kl >= 0


@given(sigma=st.floats(0.1, 2.0), loc=st.floats(-1, 1), scale=st.floats(0.3, 3.0))
@settings(max_examples=10, deadline=None)
def test_closed_form_kl_matches_monte_carlo(sigma: float, loc: float, scale: float) -> None:
    q = _posterior((4,), torch.float64, sigma, bnn.GaussianPrior(loc, scale))
    n = 20000
    with torch.no_grad():
        w = q.mu + q.sigma * torch.randn(n, 4, dtype=torch.float64)
        terms = (q.distribution.log_prob(w) - q.prior.distribution.log_prob(w)).sum(-1)
    estimate, standard_error = terms.mean(), terms.std() / math.sqrt(n)
    assert abs(q.kl_divergence().item() - estimate.item()) < 5 * standard_error.item() + 1e-6


def test_kl_is_zero_when_posterior_equals_prior() -> None:
    q = bnn.GaussianPosterior((3,), mu_init=0.0, sigma_init=1.0)
    q.prior = bnn.GaussianPrior(0.0, 1.0)
    assert q.kl_divergence().abs() < 1e-6


def test_kl_gradient_reaches_mu_and_rho() -> None:
    model = bnn.BayesianModule(mlp())
    model.kl_divergence().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_model_kl_is_the_sum_over_posteriors() -> None:
    model = bnn.BayesianModule(mlp())
    terms = [posterior.kl_divergence() for _, posterior in model.posteriors()]
    assert len(terms) == 4
    assert torch.allclose(model.kl_divergence(), torch.stack(terms).sum())
    assert torch.allclose(bnn.kl_divergence(model), model.kl_divergence())


def test_tied_tensor_counted_once() -> None:
    model = bnn.BayesianModule(TiedLanguageModel())
    names = [name for name, _ in model.posteriors()]
    assert names == ["embedding.weight", "hidden.weight", "hidden.bias"]
    expected = sum(posterior.kl_divergence() for _, posterior in model.posteriors())
    assert torch.allclose(model.kl_divergence(), expected)


def test_kl_of_model_without_posteriors_is_zero_in_model_dtype() -> None:
    kl = bnn.kl_divergence(torch.nn.Linear(2, 2).double())
    assert kl.item() == 0 and kl.dtype == torch.float64


class _StudentT(bnn.Prior):
    """A prior with no closed-form KL against a Gaussian: exercises the Monte Carlo path."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def distribution(self) -> torch.distributions.StudentT:
        return torch.distributions.StudentT(3.0, torch.zeros_like(self.scale), self.scale)


def test_monte_carlo_fallback_uses_the_forward_sample() -> None:
    layer = torch.nn.Linear(3, 2)
    q = bnn.register_posterior(layer, "weight", prior=_StudentT(), sigma_init=0.5)
    with bnn.reuse_samples():
        w = layer.weight
    expected = Normal(q.mu, q.sigma).log_prob(w).sum() - torch.distributions.StudentT(3.0).log_prob(w).sum()
    assert torch.allclose(q.kl_divergence(), expected)
    q.kl_divergence().backward()
    assert q.mu.grad is not None and q.rho.grad is not None


def test_monte_carlo_fallback_with_many_samples_converges() -> None:
    q = bnn.GaussianPosterior((2,), mu_init=0.3, sigma_init=0.7, dtype=torch.float64)
    q.prior = _StudentT().double()
    reference = q.kl_divergence(num_samples=200000).item()
    estimate = q.kl_divergence(num_samples=2000).item()
    assert abs(estimate - reference) < 0.1
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        q.kl_divergence(num_samples=0)


def test_kl_without_prior_is_a_clear_error() -> None:
    q = bnn.GaussianPosterior((2,))
    with pytest.raises(ValueError, match="has no prior"):
        q.kl_divergence()


def test_elbo_training_step_reduces_loss() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(mlp())
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + model.kl_divergence() / 1000
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10])


def test_kl_rule_registered_after_first_use_is_picked_up() -> None:
    class _Prior(_StudentT):
        @property
        def distribution(self) -> "_Marker":
            return _Marker(3.0, torch.zeros_like(self.scale), self.scale)

    class _Marker(torch.distributions.StudentT):
        pass

    q = bnn.GaussianPosterior((3,), mu_init=0.0, sigma_init=1.0)
    q.prior = _Prior()
    q.kl_divergence()  # Monte Carlo: no rule yet

    @torch.distributions.kl.register_kl(Normal, _Marker)
    def _constant(p: Normal, r: _Marker) -> torch.Tensor:
        return torch.full_like(p.loc, 0.25)

    assert q.kl_divergence().item() == 0.75
