"""Deterministic checkpoints in and out of Bayesian models, training resume and reproducibility."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchbayesian import bnn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


class TiedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens))


def _trained_plain() -> Net:
    torch.manual_seed(0)
    plain = Net()
    with torch.no_grad():
        plain.bn.running_mean.uniform_()
        plain.bn.running_var.uniform_(0.5, 2.0)
        plain.bn.num_batches_tracked.fill_(7)
    return plain.eval()


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_load_deterministic_state_dict_sets_means_and_buffers() -> None:
    plain = _trained_plain()
    model = bnn.BayesianModule(Net(), sigma_init=0.05).eval()
    sigmas = {name: q.sigma.detach().clone() for name, q in model.posteriors()}
    result = bnn.load_deterministic_state_dict(model, _roundtrip(plain.state_dict()))
    assert result == bnn.IncompatibleKeys([], [])
    x = torch.randn(5, 4)
    with bnn.frozen(model):
        assert torch.equal(model(x), plain(x))
    assert torch.equal(model.module.bn.running_mean, plain.bn.running_mean)
    assert model.module.bn.num_batches_tracked.item() == 7
    for name, posterior in model.posteriors():
        assert torch.equal(posterior.sigma, sigmas[name])  # scales untouched
    assert not torch.equal(model(x), model(x))  # still Bayesian


def test_load_deterministic_state_dict_accepts_module_prefix_and_converted_models() -> None:
    plain = _trained_plain()
    prefixed = {f"module.{key}": value for key, value in plain.state_dict().items()}
    model = bnn.BayesianModule(Net())
    bnn.load_deterministic_state_dict(model, prefixed)
    assert torch.equal(model.module.fc1.parametrizations.weight[0].mu, plain.fc1.weight)
    converted = Net()
    bnn.register_posterior(converted.fc2, "weight")
    bnn.load_deterministic_state_dict(converted, prefixed)
    assert torch.equal(converted.fc2.parametrizations.weight[0].mu, plain.fc2.weight)
    assert torch.equal(converted.fc1.weight, plain.fc1.weight)


def test_load_deterministic_state_dict_partial_conversion() -> None:
    plain = _trained_plain()
    model = bnn.BayesianModule(Net(), exclude="fc1.*")
    bnn.load_deterministic_state_dict(model, plain.state_dict())
    assert torch.equal(model.module.fc1.weight, plain.fc1.weight)
    assert torch.equal(model.module.fc2.parametrizations.weight[0].mu, plain.fc2.weight)


def test_load_deterministic_state_dict_reports_missing_and_unexpected_keys() -> None:
    state = dict(_trained_plain().state_dict())
    del state["fc2.bias"], state["bn.running_var"]
    state["fc3.weight"] = torch.zeros(2)
    model = bnn.BayesianModule(Net())
    before = copy.deepcopy(model.state_dict())
    message = r"missing keys: \['fc2.bias', 'bn.running_var'\]\nunexpected keys: \['fc3.weight'\]"
    with pytest.raises(ValueError, match=message):
        bnn.load_deterministic_state_dict(model, state)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # nothing loaded
    result = bnn.load_deterministic_state_dict(model, state, strict=False)
    assert result.missing_keys == ["fc2.bias", "bn.running_var"]
    assert result.unexpected_keys == ["fc3.weight"]
    assert torch.equal(model.module.fc1.parametrizations.weight[0].mu, state["fc1.weight"])


def test_load_deterministic_state_dict_rejects_bad_input() -> None:
    model = bnn.BayesianModule(Net())
    state = dict(_trained_plain().state_dict())
    message = r"'fc1.weight' has the wrong shape.\ncheckpoint shape: \(4, 8\)\nmodel shape: \(8, 4\)"
    with pytest.raises(ValueError, match=message):
        bnn.load_deterministic_state_dict(model, {**state, "fc1.weight": torch.zeros(4, 8)})
    with pytest.raises(TypeError, match="holds a list"):
        bnn.load_deterministic_state_dict(model, {**state, "fc1.bias": [0.0] * 8})
    with pytest.raises(TypeError, match="expects a mapping"):
        bnn.load_deterministic_state_dict(model, list(state.items()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects an nn.Module"):
        bnn.load_deterministic_state_dict(state, state)  # type: ignore[arg-type]


def test_load_deterministic_state_dict_tied_weights_need_one_key() -> None:
    torch.manual_seed(0)
    plain = TiedNet()
    model = bnn.BayesianModule(TiedNet())
    state = {"embedding.weight": plain.embedding.weight.detach()}
    assert bnn.load_deterministic_state_dict(model, state) == ([], [])
    tokens = torch.tensor([0, 3, 5])
    with bnn.frozen(model):
        assert torch.equal(model(tokens), plain(tokens))


def test_to_deterministic_returns_plain_model_with_means() -> None:
    plain = _trained_plain()
    model = bnn.BayesianModule(copy.deepcopy(plain), sigma_init=0.1).eval()
    with torch.no_grad():
        for _, posterior in model.posteriors():
            posterior.mu.add_(0.5)
    exported = bnn.to_deterministic(model)
    assert type(exported) is Net
    assert not bnn.is_bayesian(exported)
    assert list(exported.state_dict()) == list(plain.state_dict())
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in exported.parameters())
    x = torch.randn(5, 4)
    with bnn.frozen(model):
        assert torch.equal(exported.eval()(x), model(x))
    assert torch.equal(exported.fc1.weight, plain.fc1.weight + 0.5)
    fresh = Net()
    fresh.load_state_dict(_roundtrip(exported.state_dict()))
    assert torch.equal(fresh.eval()(x), exported(x))


def test_to_deterministic_leaves_model_intact_and_can_repeat() -> None:
    model = bnn.BayesianModule(Net())
    x = torch.randn(3, 4)
    model(x)  # a sample with a graph is kept on each posterior
    first = bnn.to_deterministic(model)
    second = bnn.to_deterministic(model)
    assert bnn.is_bayesian(model.module.fc1, "weight")
    assert len(list(model.posteriors())) == 4
    model(x).sum().backward()
    assert first.fc1.weight is not second.fc1.weight
    assert torch.equal(first.fc1.weight, second.fc1.weight)
    assert type(model.module.fc1).__name__ == "ParametrizedLinear"


def test_to_deterministic_keeps_ties_dtype_and_converted_models() -> None:
    model = bnn.BayesianModule(TiedNet()).to(torch.float64)
    exported = bnn.to_deterministic(model)
    assert exported.head.weight is exported.embedding.weight
    assert len(list(exported.parameters())) == 1
    assert exported.head.weight.dtype == torch.float64
    layer = nn.Linear(2, 2)
    bnn.register_posterior(layer, "bias")
    plain_layer = bnn.to_deterministic(layer)
    assert type(plain_layer) is nn.Linear and torch.equal(plain_layer.weight, layer.weight)
    assert bnn.is_bayesian(layer, "bias")
    with pytest.raises(TypeError, match="to_deterministic expects an nn.Module"):
        bnn.to_deterministic("model")  # type: ignore[arg-type]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> list[torch.Tensor]:
    losses = []
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        loss = F.cross_entropy(model(x), y) + model.kl_divergence() / 1000
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def test_resume_from_checkpoint_is_bit_identical() -> None:
    torch.manual_seed(0)
    reference = bnn.BayesianModule(Net())
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    torch.manual_seed(1)
    reference_losses = _train(reference, optimizer, range(6))

    torch.manual_seed(0)
    model = bnn.BayesianModule(Net())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    losses = _train(model, optimizer, range(3))
    checkpoint = _roundtrip(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    )

    torch.manual_seed(123)  # a fresh process: different initialisation and RNG state
    resumed = bnn.BayesianModule(Net())
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    losses += _train(resumed, resumed_optimizer, range(3, 6))

    assert torch.equal(torch.stack(losses), torch.stack(reference_losses))
    for (name, expected), (_, actual) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(actual, expected), name


def test_manual_seed_reproduces_samples_and_training() -> None:
    def run() -> tuple[torch.Tensor, list[torch.Tensor], dict[str, torch.Tensor]]:
        torch.manual_seed(42)
        model = bnn.BayesianModule(Net())
        sample = model(torch.ones(2, 4))
        losses = _train(model, torch.optim.SGD(model.parameters(), lr=0.1), range(3))
        return sample, losses, model.state_dict()

    first, second = run(), run()
    assert torch.equal(first[0], second[0])
    assert torch.equal(torch.stack(first[1]), torch.stack(second[1]))
    assert all(torch.equal(first[2][key], second[2][key]) for key in first[2])
    torch.manual_seed(43)
    assert not torch.equal(bnn.BayesianModule(Net())(torch.ones(2, 4)), first[0])
