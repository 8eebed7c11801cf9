"""Sampling scopes: per thread and task, reproduced by activation checkpointing, and the KL a forward computed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import CheckpointError, checkpoint, noop_context_fn

from torchbayesian import _sampling, bnn

POSTERIORS = [bnn.GaussianPosterior, bnn.FlipoutPosterior, bnn.LocalReparameterizationPosterior]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_two_threads_in_their_own_blocks_get_their_own_samples() -> None:
    layer = nn.Linear(64, 64)
    bnn.register_posterior(layer, "weight", sigma_init=0.5)
    barrier = threading.Barrier(2)
    seen: dict[str, list[torch.Tensor]] = {}

    def work(name: str) -> None:
        with bnn.reuse_samples():
            first = layer.weight
            barrier.wait()  # both blocks are open at once
            seen[name] = [first, layer.weight]
            barrier.wait()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["a"][0] is seen["a"][1] and seen["b"][0] is seen["b"][1]
    assert seen["a"][0] is not seen["b"][0] and not torch.equal(seen["a"][0], seen["b"][0])
    assert _sampling.active() is None


def test_two_asyncio_tasks_get_their_own_scopes() -> None:
    layer = nn.Linear(8, 8)
    bnn.register_posterior(layer, "weight", sigma_init=0.5)

    async def sample() -> tuple[torch.Tensor, torch.Tensor]:
        with bnn.reuse_samples():
            first = layer.weight
            await asyncio.sleep(0)  # the other task runs here, inside its own block
            return first, layer.weight

    async def both() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return await asyncio.gather(sample(), sample())

    (a1, a2), (b1, b2) = asyncio.run(both())
    assert a1 is a2 and b1 is b2 and a1 is not b1


def test_fresh_samples_nest_and_restore_the_outer_scope() -> None:
    layer = nn.Linear(3, 3)
    bnn.register_posterior(layer, "weight")
    with bnn.reuse_samples():
        outer = layer.weight
        with _sampling.fresh_samples():
            assert layer.weight is not outer and layer.weight is layer.weight
        with bnn.reuse_samples():
            assert layer.weight is outer
        assert layer.weight is outer
    assert layer.weight is not layer.weight  # outside any scope every read draws


class _Checkpointed(nn.Module):
    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
        self.use_reentrant = use_reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_reentrant is None:
            return self.body(x).sum()
        return checkpoint(self.body, x, use_reentrant=self.use_reentrant).sum()


def _gradients(model: bnn.BayesianModule, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(7)
    loss = model(x) + model.kl_divergence()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("posterior", POSTERIORS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_recomputes_the_same_sample_and_noise(device, posterior, use_reentrant) -> None:
    torch.manual_seed(0)
    net = _Checkpointed(None)
    x = torch.randn(4, 8, device=device, requires_grad=use_reentrant)
    # A prior other than N(0, 1): the KL's gradient reads the prior the recomputed draw saves.
    model = bnn.BayesianModule(net.to(device), posterior, bnn.GaussianPrior(0.5, 0.3), sigma_init=0.3)
    expected_loss, expected = _gradients(model, x)
    net.use_reentrant = use_reentrant
    loss, got = _gradients(model, x)
    torch.testing.assert_close(loss, expected_loss)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference)


class _ReadsBeforeAndTwiceInside(nn.Module):
    """Reads its layer before a checkpointed region and twice inside it."""

    def __init__(self, context_fn: Callable[[], tuple[Any, Any]] | None) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8)
        self.context_fn = context_fn

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.tanh(self.layer(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.layer(x)
        if self.context_fn is None:
            return (first + self.body(first)).sum()
        return (first + checkpoint(self.body, first, use_reentrant=False, context_fn=self.context_fn)).sum()


@pytest.mark.parametrize("posterior", POSTERIORS, ids=lambda p: p.__name__)
def test_replay_samples_recomputes_a_region_in_the_scope_it_ran_in(posterior) -> None:
    torch.manual_seed(0)
    net = _ReadsBeforeAndTwiceInside(None)
    model = bnn.BayesianModule(net, posterior, bnn.GaussianPrior(0.5, 0.3), sigma_init=0.3)
    x = torch.randn(4, 8)
    expected_loss, expected = _gradients(model, x)
    net.context_fn = bnn.replay_samples
    loss, got = _gradients(model, x)
    torch.testing.assert_close(loss, expected_loss)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference)
    with pytest.raises(CheckpointError):  # outside the scope, the recomputation draws the cached reads anew
        net.context_fn = noop_context_fn
        _gradients(model, x)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_hugging_face_gradient_checkpointing_gives_the_gradients_of_the_same_sample(use_reentrant) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(config)
    model = bnn.BayesianModule(llama, bnn.FlipoutPosterior, fallback=bnn.GaussianPosterior, sigma_init=0.05)
    tokens = torch.randint(0, 32, (2, 6))

    def gradients() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(3)
        loss = model(input_ids=tokens, labels=tokens).loss + model.kl_divergence() / 100
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return loss.detach(), grads

    model.train()
    expected_loss, expected = gradients()
    llama.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert llama.model.layers[0].gradient_checkpointing
    loss, got = gradients()
    torch.testing.assert_close(loss, expected_loss)
    for value, reference in zip(got, expected):
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6)


def test_a_gradient_hook_on_a_perturbation_sees_its_gradient_intact() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(nn.Linear(6, 5), bnn.FlipoutPosterior, sigma_init=0.2)
    q = model.module.parametrizations.weight[0]
    kept: list[torch.Tensor] = []
    with bnn.reuse_samples():
        q.perturbation().register_hook(lambda grad: kept.append(grad))
        loss = model(torch.randn(3, 6)).square().sum() + model.kl_divergence()
    loss.backward()
    copy = kept[0].clone()
    assert not torch.equal(copy, q.rho.grad)  # the hook's gradient is dL/d(perturbation), not dL/drho
    model.zero_grad()
    assert torch.equal(kept[0], copy)  # nothing later overwrote the tensor the hook kept


def test_posterior_list_follows_deletion_without_any_other_module_being_built() -> None:
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)))
    assert len(list(model.posteriors())) == 4
    kl = model.kl_divergence()
    del model.module[1]
    assert [name for name, _ in model.posteriors()] == ["0.weight", "0.bias"]
    assert model.kl_divergence() < kl


def test_the_natural_loop_reuses_the_forwards_kl_and_recomputes_it_after_a_step() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), sigma_init=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    posteriors = [q for _, q in model.posteriors()]
    for _ in range(3):
        optimizer.zero_grad()
        output = model(x)
        recorded = [_sampling.find_kl(q) for q in posteriors]
        assert all(record is not None for record in recorded)
        terms = [q.kl_divergence() for q in posteriors]
        assert all(term is record.value for term, record in zip(terms, recorded))  # reused, not recomputed
        loss = nn.functional.cross_entropy(output, y) + model.kl_divergence() / 1000
        loss.backward()
        optimizer.step()
        # The step changed the parameters, and backward freed the forward's graph: computed anew.
        fresh = posteriors[0].kl_divergence()
        assert fresh is not recorded[0].value
        fresh.backward()


@pytest.mark.parametrize("changed", ["mu", "rho", "prior.loc", "prior.scale"])
def test_a_kl_is_computed_anew_after_any_tensor_it_read_changes_in_place(changed: str) -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(nn.Linear(4, 3), sigma_init=0.1)
    q = model.module.parametrizations.weight[0]
    model(torch.randn(2, 4))
    recorded = _sampling.find_kl(q)
    assert q.kl_divergence() is recorded.value
    owner, name = (q.prior, changed.split(".")[1]) if changed.startswith("prior.") else (q, changed)
    with torch.no_grad():
        getattr(owner, name).add_(0.5)
    fresh = q.kl_divergence()
    assert fresh is not recorded.value
    expected = torch.distributions.kl_divergence(q.distribution, q.prior.distribution).sum()
    torch.testing.assert_close(fresh, expected)


def test_kl_after_backward_through_the_forward_is_computed_anew() -> None:
    model = bnn.BayesianModule(nn.Linear(4, 2))
    model(torch.randn(2, 4)).sum().backward()
    first = model.kl_divergence()
    first.backward()  # not the forward's node, whose saved tensors that backward freed
    second = model.kl_divergence()
    second.backward()
    torch.testing.assert_close(first, second)


def test_kl_reuse_is_thread_local() -> None:
    model = bnn.BayesianModule(nn.Linear(4, 2))
    q = model.module.parametrizations.weight[0]
    model(torch.randn(2, 4))
    mine = _sampling.find_kl(q)
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(_sampling.find_kl(q)))
    thread.start()
    thread.join()
    assert mine is not None and found == [None]


def test_kl_without_gradient_is_the_same_value() -> None:
    model = bnn.BayesianModule(nn.Linear(4, 2))
    with torch.no_grad():
        model(torch.randn(2, 4))
        value = model.kl_divergence()
    assert not value.requires_grad
    torch.testing.assert_close(value, model.kl_divergence().detach())
