import copy
import io

import pytest
import torch

from tests.models import MODELS, TiedLanguageModel, inputs_for
from torchbayesian import bnn


def _trained(name: str) -> bnn.BayesianModule:
    model = bnn.BayesianModule(MODELS[name]())
    with torch.no_grad():
        for _, q in model.posteriors():
            q.mu.add_(0.1)
            q.rho.sub_(0.5)
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_round_trip_into_a_fresh_model(name: str, tmp_path) -> None:
    model = _trained(name)
    torch.save(model.state_dict(), tmp_path / "bnn.pt")
    fresh = bnn.BayesianModule(MODELS[name]())
    state = torch.load(tmp_path / "bnn.pt", weights_only=True)
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state)
    x = inputs_for(name)
    model.eval(), fresh.eval()
    with bnn.frozen(model), bnn.frozen(fresh):
        assert torch.equal(model(x), fresh(x))
    for (_, a), (_, b) in zip(model.posteriors(), fresh.posteriors()):
        assert torch.equal(a.rho, b.rho)


def test_state_dict_keys_are_exact() -> None:
    model = bnn.BayesianModule(MODELS["mlp"]())
    layer = [
        "parametrizations.weight.0.mu", "parametrizations.weight.0.rho",
        "parametrizations.weight.0.prior.loc", "parametrizations.weight.0.prior.scale",
        "parametrizations.bias.0.mu", "parametrizations.bias.0.rho",
        "parametrizations.bias.0.prior.loc", "parametrizations.bias.0.prior.scale",
    ]
    assert list(model.state_dict()) == [f"module.{i}.{key}" for i in (0, 2) for key in layer]


@pytest.mark.parametrize("name", ["mlp", "lstm"])
def test_whole_model_pickle_and_deepcopy(name: str) -> None:
    model = _trained(name)
    x = inputs_for(name)
    model(x)
    model.kl_divergence()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    with bnn.frozen(model), bnn.frozen(loaded), bnn.frozen(copied):
        expected = model(x)
        assert torch.equal(loaded(x), expected) and torch.equal(copied(x), expected)
    assert not torch.equal(loaded(x), loaded(x))
    assert torch.equal(copied.kl_divergence(), model.kl_divergence())


def test_pickle_keeps_tied_weights_tied() -> None:
    model = bnn.BayesianModule(TiedLanguageModel())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    inner = loaded.module
    assert inner.decoder.parametrizations.weight[0] is inner.embedding.parametrizations.weight[0]
    assert len(list(loaded.posteriors())) == 3
