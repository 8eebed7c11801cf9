import collections
import copy
import io

import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from torchbayesian import bnn
from torchbayesian import predict as predict_module

PATHS = [True, False]  # vectorize=True (vmap) and vectorize=False (loop)


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(sigma: float = 0.3) -> bnn.BayesianModule:
    return bnn.BayesianModule(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), sigma_init=sigma)


class _TwiceSameLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) - self.layer(x)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        return out if out.sum() > 0 else -out


class _Structured(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> dict:
        out = self.layer(x) * scale
        return {"logits": out, "pair": (out.sum(-1), out.mean())}


@pytest.mark.parametrize("vectorize", PATHS)
def test_draws_match_the_closed_form_predictive_of_a_linear_layer(vectorize):
    torch.manual_seed(0)
    layer = nn.Linear(5, 1, bias=False, dtype=torch.float64)
    model = bnn.BayesianModule(layer, sigma_init=0.5)
    x = torch.randn(1, 5, dtype=torch.float64)
    with torch.no_grad():
        draws = bnn.predict(model, x, num_samples=4000, vectorize=vectorize).squeeze()
    posterior = model.module.parametrizations.weight[0]
    mean = (posterior.mu.detach() @ x.T).squeeze()
    std = 0.5 * x.norm()
    assert draws.shape == (4000,)
    assert ks_2samp(((draws - mean) / std).numpy(), torch.randn(4000, dtype=torch.float64).numpy()).pvalue > 1e-3
    lag_correlation = torch.corrcoef(torch.stack([draws[:-1], draws[1:]]))[0, 1]
    assert abs(lag_correlation) < 0.07  # draws are independent: |r| ~ 1/sqrt(4000) = 0.016


def test_vmap_and_loop_are_identically_distributed():
    torch.manual_seed(1)
    model = _mlp()
    x = torch.randn(2, 3)
    with torch.no_grad():
        batched = bnn.predict(model, x, num_samples=1500, vectorize=True)
        looped = bnn.predict(model, x, num_samples=1500, vectorize=False)
    assert batched.shape == looped.shape == (1500, 2, 2)
    for i in range(2):
        for j in range(2):
            assert ks_2samp(batched[:, i, j].numpy(), looped[:, i, j].numpy()).pvalue > 1e-3
    torch.testing.assert_close(batched.std(0), looped.std(0), rtol=0.15, atol=0.0)
    torch.testing.assert_close(batched.mean(0), looped.mean(0), atol=4 * looped.std(0).max().item() / 1500**0.5,
                               rtol=0.0)


@pytest.mark.parametrize("vectorize", PATHS)
def test_a_weight_read_twice_gets_one_sample_per_draw(vectorize):
    model = bnn.BayesianModule(_TwiceSameLayer(), sigma_init=1.0)
    out = bnn.predict(model, torch.randn(3, 4), num_samples=5, vectorize=vectorize)
    assert torch.equal(out, torch.zeros(5, 3, 4))


@pytest.mark.parametrize("vectorize", PATHS)
def test_draws_are_fresh_inside_an_enclosing_reuse_samples_block(vectorize):
    model = _mlp()
    x = torch.randn(4, 3)
    with bnn.reuse_samples():
        before = model(x)
        out = bnn.predict(model, x, num_samples=6, vectorize=vectorize)
        after = model(x)
    assert torch.equal(before, after)  # the enclosing block keeps its own sample
    assert len({tuple(o.flatten().tolist()) for o in out}) == 6


@pytest.mark.parametrize("vectorize", PATHS)
def test_structured_outputs_and_keyword_arguments_are_stacked(vectorize):
    model = bnn.BayesianModule(_Structured())
    out = bnn.predict(model, torch.randn(4, 3), scale=2.0, num_samples=3, vectorize=vectorize)
    assert out["logits"].shape == (3, 4, 2)
    assert out["pair"][0].shape == (3, 4) and out["pair"][1].shape == (3,)
    torch.testing.assert_close(out["pair"][0], out["logits"].sum(-1))


_Pair = collections.namedtuple("_Pair", ["first", "rest"])


class _Containers(nn.Module):
    """Outputs in every container `predict` rebuilds, with a non-tensor that differs between draws."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> _Pair:
        out = self.layer(x)
        self.calls += 1
        return _Pair(out, [{0: out.sum(), "tag": "same", "call": self.calls}])


def test_loop_rebuilds_named_tuples_lists_and_mappings_and_drops_values_that_differ():
    model = bnn.BayesianModule(_Containers())
    out = bnn.predict(model, torch.randn(4, 3), num_samples=3, vectorize=False)
    assert isinstance(out, _Pair) and isinstance(out.rest, list) and out.first.shape == (3, 4, 2)
    torch.testing.assert_close(out.rest[0][0], out.first.sum((1, 2)))
    assert out.rest[0]["tag"] == "same" and out.rest[0]["call"] is None


class _ChangingStructure(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls += 1
        return (self.layer(x),) * (1 + self.calls % 2)


def test_loop_rejects_outputs_whose_structure_changes_between_draws():
    model = bnn.BayesianModule(_ChangingStructure())
    with pytest.raises(ValueError, match="_ChangingStructure returned outputs of different structure"):
        bnn.predict(model, torch.randn(4, 3), num_samples=2, vectorize=False)


class _HFStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, input_ids: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.layer(input_ids))


@pytest.mark.parametrize("vectorize", PATHS)
def test_model_output_is_stacked(vectorize):
    model = bnn.BayesianModule(_HFStyle())
    out = bnn.predict(model, input_ids=torch.randn(4, 3), num_samples=3, vectorize=vectorize)
    assert isinstance(out, SequenceClassifierOutput)
    assert out.logits.shape == (3, 4, 2)


def test_frozen_model_gives_identical_draws():
    model = _mlp()
    x = torch.randn(4, 3)
    with bnn.frozen(model):
        out = bnn.predict(model, x, num_samples=4)
        reference = model(x)
    assert torch.equal(out, reference.expand(4, 4, 2))


def test_gradients_flow_through_vectorised_draws():
    model = _mlp()
    bnn.predict(model, torch.randn(4, 3), num_samples=4, vectorize=True).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_last_sample_is_left_unchanged_and_kl_still_works():
    model = _mlp()
    model(torch.randn(2, 3))
    saved = [p.last_sample for _, p in model.posteriors()]
    bnn.predict(model, torch.randn(2, 3), num_samples=3, vectorize=True)
    assert all(p.last_sample is s for (_, p), s in zip(model.posteriors(), saved))
    assert torch.isfinite(model.kl_divergence())


def test_falls_back_to_a_loop_and_remembers_it():
    torch.manual_seed(2)
    model = bnn.BayesianModule(_DataDependent(), sigma_init=0.5)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="BayesianModule cannot be vectorised with torch.func.vmap"):
        bnn.predict(model, x, num_samples=3, vectorize=True)
    out = bnn.predict(model, x, num_samples=64)
    assert out.shape == (64, 4, 2)
    assert (out.sum(dim=(1, 2)) >= 0).all()  # the model's own branch ran for each draw
    assert out.std(0).min() > 0
    assert bnn.predict(model, x, num_samples=2, vectorize=False).shape == (2, 4, 2)


def test_a_bayesian_module_remembers_that_vmap_failed_and_loops_at_once(monkeypatch):
    model = bnn.BayesianModule(_DataDependent(), sigma_init=0.5)
    x = torch.randn(4, 3)
    bnn.predict(model, x, num_samples=3)  # vmap fails here, once

    def no_more_vmap(*args, **kwargs):
        raise AssertionError("predict tried vmap again")

    monkeypatch.setattr(predict_module, "_vectorized", no_more_vmap)
    assert bnn.predict(model, x, num_samples=3).shape == (3, 4, 2)
    model.eval()  # another mode: vmap is tried again there
    with pytest.raises(ValueError, match="cannot be vectorised"):
        bnn.predict(model, x, num_samples=3, vectorize=True)


def test_the_vmap_memo_is_a_plain_attribute_that_copies_and_pickles_outside_the_state_dict():
    model = bnn.BayesianModule(_DataDependent(), sigma_init=0.5)
    assert model._vmap_works_by_mode == {}
    keys = set(model.state_dict())
    bnn.predict(model, torch.randn(4, 3), num_samples=3)
    assert model._vmap_works_by_mode == {True: False}
    assert set(model.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert copied._vmap_works_by_mode == {True: False}
        assert copied._vmap_works_by_mode is not model._vmap_works_by_mode
    del model.__dict__["_vmap_works_by_mode"]  # as in a model pickled before the memo was declared
    bnn.predict(model, torch.randn(4, 3), num_samples=3)
    assert model._vmap_works_by_mode == {True: False}


def test_batchnorm_in_training_mode_falls_back_and_updates_statistics():
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    batchnorm = model.module[1]
    out = bnn.predict(model, torch.randn(8, 3), num_samples=3)
    assert out.shape == (3, 8, 4)
    assert batchnorm.num_batches_tracked.item() == 3


def test_cnn_draws_are_independent_in_both_paths():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model = bnn.BayesianModule(net, sigma_init=0.2).eval()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        batched = bnn.predict(model, x, num_samples=400, vectorize=True, chunk_size=100)
        looped = bnn.predict(model, x, num_samples=400, vectorize=False)
    assert batched.shape == looped.shape == (400, 2, 3)
    assert ks_2samp(batched[:, 0, 0].numpy(), looped[:, 0, 0].numpy()).pvalue > 1e-3
    torch.testing.assert_close(batched.std(0), looped.std(0), rtol=0.25, atol=0.0)


def test_bad_arguments_raise():
    model = _mlp()
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        bnn.predict(model, torch.randn(2, 3), num_samples=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        bnn.predict(model, torch.randn(2, 3), num_samples=2, chunk_size=-1)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        bnn.predict(lambda x: x, torch.randn(2, 3), num_samples=2)
