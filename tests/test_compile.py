"""`torch.compile(fullgraph=True)` on Bayesian models: sampling, frozen mode, and the KL afterwards."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbayesian import bnn


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def _eager_with(model: bnn.BayesianModule, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the wrapped Sequential by hand with ``values`` as its weights and biases."""
    for index, layer in enumerate(model.module):
        if isinstance(layer, nn.Linear):
            x = F.linear(x, values[f"{index}.weight"], values[f"{index}.bias"])
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(x, values[f"{index}.weight"], values[f"{index}.bias"])
        else:
            x = layer(x)
    return x


def _last_samples(model: bnn.BayesianModule) -> dict[str, torch.Tensor]:
    return {name: posterior.last_sample for name, posterior in model.posteriors()}


def _means(model: bnn.BayesianModule) -> dict[str, torch.Tensor]:
    return {name: posterior.mean.detach() for name, posterior in model.posteriors()}


@pytest.mark.parametrize(("build", "shape"), [(_mlp, (5, 4)), (_cnn, (5, 1, 6, 6))], ids=["mlp", "cnn"])
def test_fullgraph_compile_samples_freezes_and_trains(build, shape):
    torch.manual_seed(0)
    model = bnn.BayesianModule(build(), sigma_init=0.1)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    x = torch.randn(shape)

    first = compiled(x)
    samples = _last_samples(model)
    assert all(sample is not None for sample in samples.values())
    with torch.no_grad():
        expected = _eager_with(model, x, {n: s.detach() for n, s in samples.items()})
    torch.testing.assert_close(first.detach(), expected, rtol=1e-5, atol=1e-5)
    second = compiled(x)
    assert not torch.allclose(first, second), "a compiled forward must draw fresh weights"

    loss = F.cross_entropy(second, torch.zeros(shape[0], dtype=torch.long)) + model.kl_divergence() / 100
    loss.backward()
    for _, posterior in model.posteriors():
        assert posterior.mu.grad is not None and posterior.mu.grad.abs().sum() > 0
        assert posterior.rho.grad is not None and torch.isfinite(posterior.rho.grad).all()

    with bnn.frozen(model), torch.no_grad():
        mean_out = compiled(x)
        torch.testing.assert_close(compiled(x), mean_out, rtol=0, atol=0)
        torch.testing.assert_close(mean_out, _eager_with(model, x, _means(model)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(compiled(x), mean_out), "leaving frozen mode must sample again"


def test_compiled_loss_with_kl_inside_one_block_matches_eager_gradients():
    torch.manual_seed(0)
    model = bnn.BayesianModule(_mlp(), sigma_init=0.1)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))

    def loss_fn(inputs: torch.Tensor) -> torch.Tensor:
        with bnn.reuse_samples():
            return F.cross_entropy(model(inputs), y) + model.kl_divergence() / 10

    compiled_loss = torch.compile(loss_fn, fullgraph=True, backend="inductor")(x)
    compiled_loss.backward()
    grads = {n: (q.mu.grad.clone(), q.rho.grad.clone()) for n, q in model.posteriors()}
    samples = {n: s.detach() for n, s in _last_samples(model).items()}

    model.zero_grad()
    eps = {n: (samples[n] - q.mu.detach()) / q.sigma.detach() for n, q in model.posteriors()}
    weights = {n: q.mu + q.sigma * eps[n] for n, q in model.posteriors()}
    eager_loss = F.cross_entropy(_eager_with(model, x, weights), y) + bnn.kl_divergence(model) / 10
    eager_loss.backward()
    torch.testing.assert_close(compiled_loss.detach(), eager_loss.detach(), rtol=1e-5, atol=1e-5)
    for name, q in model.posteriors():
        torch.testing.assert_close(grads[name][0], q.mu.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[name][1], q.rho.grad, rtol=1e-4, atol=1e-5)
