"""KL divergence and gradients for every prior/posterior pair, and Monte Carlo convergence."""

import math

import pytest
import torch
from torch import nn

from torchbayesian import bnn
from torchbayesian.kl import posterior_kl

PRIORS = {
    "gaussian": lambda: bnn.GaussianPrior(0.1, 0.8),
    "scale_mixture": lambda: bnn.ScaleMixturePrior(0.5, 1.0, 0.0025),
    "laplace": lambda: bnn.LaplacePrior(-0.2, 0.5),
    "student_t": lambda: torch.distributions.StudentT(3.0, 0.0, 0.7),
}
POSTERIORS = {
    "gaussian": (bnn.GaussianPosterior, {"sigma_init": 0.3}),
    "scale_mixture": (bnn.ScaleMixturePosterior, {"pi": 0.3, "sigma1_init": 0.4, "sigma2_init": 0.1}),
}
CLOSED_FORM = {("gaussian", "gaussian"), ("gaussian", "laplace")}


def _register(posterior_name: str, prior_name: str) -> bnn.VariationalPosterior:
    cls, kwargs = POSTERIORS[posterior_name]
    layer = nn.Linear(1, 3).double()
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([-0.6, 0.05, 0.9]))
    return bnn.register_posterior(layer, "bias", cls, prior=PRIORS[prior_name](), **kwargs)


def _quadrature_kl(q: bnn.VariationalPosterior) -> float:
    """Integrate q (log q - log p) on a fine grid around each element, in float64."""
    with torch.no_grad():
        spread = torch.stack([getattr(q, name) for name in ("sigma", "sigma1", "sigma2") if hasattr(q, name)]).amax(0)
        grid = q.mu + spread * torch.linspace(-14, 14, 40001, dtype=torch.float64)[:, None]
        log_q = q.distribution.log_prob(grid)
        integrand = log_q.exp() * (log_q - q.prior.distribution.log_prob(grid))
        return torch.trapezoid(integrand, grid, dim=0).sum().item()


@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("posterior_name", POSTERIORS)
def test_kl_estimate_matches_quadrature(posterior_name, prior_name):
    torch.manual_seed(0)
    q = _register(posterior_name, prior_name)
    reference = _quadrature_kl(q)
    assert reference > 0.5
    with torch.no_grad():
        estimate = q.kl_divergence(num_samples=4000).item()
        if (posterior_name, prior_name) in CLOSED_FORM:
            assert estimate == pytest.approx(reference, rel=1e-6)
            return
        samples = q.distribution.sample((4000,))
        terms = q.distribution.log_prob(samples).sum(-1) - q.prior.distribution.log_prob(samples).sum(-1)
        standard_error = terms.std().item() / math.sqrt(4000)
    assert abs(estimate - reference) < 4 * standard_error
    assert abs(terms.mean().item() - reference) < 4 * standard_error


def test_monte_carlo_kl_converges_like_one_over_sqrt_samples():
    torch.manual_seed(0)
    q = _register("gaussian", "scale_mixture")
    with torch.no_grad():
        reference = q.kl_divergence(num_samples=20_000).item()

        def rms_error(num_samples: int, repeats: int = 200) -> float:
            errors = torch.tensor([posterior_kl(q, num_samples=num_samples).item() - reference for _ in range(repeats)])
            return errors.pow(2).mean().sqrt().item()

        small, large = rms_error(8), rms_error(128)
    ratio = small / large
    assert 3.2 < ratio < 4.9, ratio
    assert large < 0.1 * abs(reference)
    reference_standard_error = small * math.sqrt(8 / 20_000)
    assert abs(reference - _quadrature_kl(q)) < 4 * reference_standard_error


def test_single_sample_kl_uses_last_forward_sample():
    torch.manual_seed(0)
    q = _register("scale_mixture", "scale_mixture")
    sample = q()
    expected = q.distribution.log_prob(sample).sum() - q.prior.distribution.log_prob(sample).sum()
    torch.testing.assert_close(q.kl_divergence(), expected)


@pytest.mark.parametrize("num_samples", [None, 3])
@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("posterior_name", POSTERIORS)
def test_kl_gradients_reach_every_variational_parameter(posterior_name, prior_name, num_samples):
    torch.manual_seed(0)
    cls, kwargs = POSTERIORS[posterior_name]
    model = bnn.BayesianModule(nn.Linear(3, 2), cls, PRIORS[prior_name](), **kwargs)
    model(torch.randn(4, 3))
    model.kl_divergence(num_samples=num_samples).backward()
    names = []
    for name, param in model.named_parameters():
        names.append(name.rsplit(".", 1)[-1])
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    expected = {"mu", "rho"} if posterior_name == "gaussian" else {"mu", "rho1", "rho2"}
    assert set(names) == expected


@pytest.mark.parametrize("prior_name", PRIORS)
@pytest.mark.parametrize("posterior_name", POSTERIORS)
def test_elbo_gradients_reach_every_variational_parameter(posterior_name, prior_name):
    torch.manual_seed(1)
    cls, kwargs = POSTERIORS[posterior_name]
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), cls, PRIORS[prior_name](), **kwargs)
    loss = model(torch.randn(8, 3)).pow(2).mean() + model.kl_divergence() / 100
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
