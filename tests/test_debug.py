"""`detect_anomalies`: NaN and Inf are reported with the posterior's qualified name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbayesian import bnn


def _model() -> bnn.BayesianModule:
    torch.manual_seed(0)
    return bnn.BayesianModule(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))


def test_clean_training_passes_and_hooks_are_removed() -> None:
    model = _model()
    x = torch.randn(5, 3)
    with bnn.detect_anomalies(model) as watched:
        assert watched is model
        (model(x).sum() + model.kl_divergence()).backward()
    posterior = model.module[0].parametrizations.weight[0]
    assert not posterior._forward_hooks
    assert not list(posterior.kl_hooks())
    with torch.no_grad():
        posterior.mu.fill_(float("nan"))
    assert torch.isnan(model(x)).all()  # no check outside the block


def test_nan_sample_names_the_posterior() -> None:
    model = _model()
    with torch.no_grad():
        model.module[2].parametrizations.bias[0].mu[1] = float("nan")
    with bnn.detect_anomalies(model), pytest.raises(
        FloatingPointError, match=r"the sample of posterior '2.bias' contains NaN or Inf; non-finite parameters: mu\."
    ):
        model(torch.randn(2, 3))


def test_frozen_mean_and_infinite_rho_are_reported() -> None:
    model = _model()
    with torch.no_grad():
        model.module[0].parametrizations.weight[0].rho[0, 0] = float("inf")
    message = r"'0.weight'.*non-finite parameters: rho"
    with bnn.detect_anomalies(model), pytest.raises(FloatingPointError, match=message):
        model(torch.randn(2, 3))
    with torch.no_grad():
        model.module[0].parametrizations.weight[0].rho[0, 0] = 0.0
        model.module[0].parametrizations.weight[0].mu[0, 0] = float("inf")
    message = "the mean of posterior '0.weight'"
    with bnn.detect_anomalies(model), bnn.frozen(model), pytest.raises(FloatingPointError, match=message):
        model(torch.randn(2, 3))


def test_infinite_kl_names_the_posterior() -> None:
    model = _model()
    with torch.no_grad():
        model.module[2].parametrizations.weight[0].rho.fill_(-200.0)  # sigma underflows to 0: KL = inf
    model(torch.randn(2, 3))
    assert torch.isinf(model.kl_divergence())
    with bnn.detect_anomalies(model), pytest.raises(
        FloatingPointError, match=r"the KL divergence of posterior '2.weight' is inf; all its parameters are finite"
    ):
        model.kl_divergence()


def test_nan_prior_is_reported() -> None:
    layer = nn.Linear(2, 2)
    posterior = bnn.register_posterior(layer, "weight")
    posterior.prior.scale.fill_(float("nan"))
    message = "'weight' is nan; non-finite parameters: prior.scale"
    with bnn.detect_anomalies(layer), pytest.raises(FloatingPointError, match=message):
        bnn.kl_divergence(layer)


def test_nan_gradient_names_the_parameter() -> None:
    model = _model()
    x = torch.randn(2, 3)
    with bnn.detect_anomalies(model), pytest.raises(
        FloatingPointError, match=r"the gradient of '(mu|rho)' in posterior '2.bias' contains NaN or Inf"
    ), bnn.reuse_samples():
        # Only the last bias gets a NaN gradient; the other posteriors' gradients stay finite.
        (model(x).sum() + torch.tensor(float("nan")) * model.module[2].bias.sum()).backward()


def test_detect_anomalies_rejects_non_modules() -> None:
    message = "detect_anomalies expects an nn.Module, got str"
    with pytest.raises(TypeError, match=message), bnn.detect_anomalies("model"):  # type: ignore[arg-type]
        pass
