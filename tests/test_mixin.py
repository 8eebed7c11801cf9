"""Tests for BayesianMixin: log_prior, log_variational_posterior, sample_elbo, freeze."""

import pytest
import torch
from torch import nn

from torchbayesian import bnn


def _model(prior=None) -> bnn.BayesianModule:
    torch.manual_seed(0)
    return bnn.BayesianModule(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), prior=prior)


def test_log_densities_are_evaluated_at_the_last_forward_samples():
    model = _model(bnn.LaplacePrior(0.0, 0.5))
    model(torch.randn(5, 3))
    expected_q = expected_p = 0.0
    for _, q in model.posteriors():
        w = q.last_sample
        expected_q += torch.distributions.Normal(q.mu, q.sigma).log_prob(w).sum()
        expected_p += (-torch.log(torch.tensor(1.0)) - w.abs() / 0.5).sum()
    torch.testing.assert_close(model.log_variational_posterior(), expected_q)
    torch.testing.assert_close(model.log_prior(), expected_p)
    same = model.log_prior()
    torch.testing.assert_close(model.log_prior(), same)
    model(torch.randn(5, 3))
    assert not torch.equal(model.log_prior(), same)


def test_difference_is_the_single_sample_kl_estimate():
    model = _model(bnn.ScaleMixturePrior())
    model(torch.randn(2, 3))
    torch.testing.assert_close(model.log_variational_posterior() - model.log_prior(), model.kl_divergence())


def test_single_sample_estimate_is_unbiased_for_the_closed_form():
    model = _model(bnn.GaussianPrior(0.0, 0.5))
    exact = model.kl_divergence().item()
    x = torch.randn(1, 3)
    with torch.no_grad():
        estimates = []
        for _ in range(800):
            model(x)
            estimates.append((model.log_variational_posterior() - model.log_prior()).item())
    estimates = torch.tensor(estimates)
    standard_error = estimates.std().item() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - exact) < 4 * standard_error


def test_log_densities_have_gradients():
    model = _model(bnn.ScaleMixturePrior())
    model(torch.randn(2, 3))
    (model.log_variational_posterior() - model.log_prior()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_log_densities_before_any_forward_raise():
    model = _model()
    with pytest.raises(RuntimeError, match="has not been sampled yet"):
        model.log_prior()
    with pytest.raises(RuntimeError, match="run an unfrozen forward pass"):
        bnn.Linear(2, 2).log_variational_posterior()


def test_sample_elbo_averages_data_and_weighted_kl():
    model = _model(bnn.ScaleMixturePrior())
    criterion = nn.MSELoss()
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    torch.manual_seed(5)
    expected = 0.0
    for _ in range(3):
        out = model(x)
        expected = expected + criterion(out, y) + 0.01 * (model.log_variational_posterior() - model.log_prior())
    expected = expected / 3
    torch.manual_seed(5)
    loss = model.sample_elbo(x, y, criterion, num_samples=3, kl_weight=0.01)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_sample_elbo_draws_a_new_sample_per_term_inside_an_outer_block():
    model = _model()
    outputs = []

    def criterion(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outputs.append(output.detach())
        return (output - target).pow(2).mean()

    with bnn.reuse_samples():
        model.sample_elbo(torch.randn(4, 3), torch.randn(4, 2), criterion, num_samples=3)
    assert len(outputs) == 3
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


def test_sample_elbo_decreases_when_training():
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Linear(1, 16, prior_pi=1.0, prior_sigma_1=1.0), nn.Tanh(),
                           bnn.Linear(16, 1, prior_pi=1.0, prior_sigma_1=1.0))
    x = torch.linspace(-1, 1, 64)[:, None]
    y = torch.sin(3 * x)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(150):
        optimizer.zero_grad()
        loss = model.sample_elbo(x, y, nn.MSELoss(), num_samples=1, kl_weight=1 / 6400)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


@pytest.mark.parametrize("num_samples", [0, 1.5, True])
def test_sample_elbo_rejects_bad_num_samples(num_samples):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        _model().sample_elbo(torch.randn(1, 3), torch.randn(1, 2), nn.MSELoss(), num_samples=num_samples)


def test_bayesian_module_keeps_relative_names_and_freeze():
    model = _model()
    assert [name for name, _ in model.posteriors()][:2] == ["0.weight", "0.bias"]
    x = torch.randn(2, 3)
    assert model.freeze() is model
    assert torch.equal(model(x), model(x))
    assert model.unfreeze() is model
    assert not torch.equal(model(x), model(x))


def test_custom_container():
    class Net(bnn.BayesianMixin, nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = bnn.Linear(2, 1)

        def forward(self, x):
            return self.fc(x)

    net = Net()
    net(torch.randn(3, 2))
    torch.testing.assert_close(net.kl_divergence(), net.fc.kl_divergence())
    torch.testing.assert_close(net.log_prior(), net.fc.log_prior())


def test_mixin_outside_a_module_raises():
    class NotAModule(bnn.BayesianMixin):
        pass

    with pytest.raises(TypeError, match="must be mixed into an nn.Module"):
        NotAModule().kl_divergence()
