"""DistributedDataParallel and FSDP on CPU: two gloo processes over loopback (127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tests.process_group import run_workers
from torchbayesian import bnn

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

WORLD = 2
N = 100  # training-set size used in the loss nll_mean + kl / N
STEPS = 3
TIMEOUT_S = 180


def _model(seed: int) -> bnn.BayesianModule:
    torch.manual_seed(seed)
    return bnn.BayesianModule(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), sigma_init=0.1)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)


def _loss(output: torch.Tensor, target: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target) + kl / N


class _WithKL(nn.Module):
    """Return the output and the KL from one forward, so FSDP computes the KL on unsharded weights."""

    def __init__(self, model: bnn.BayesianModule) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x), self.model.kl_divergence()


def _gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(WORLD)]
    dist.all_gather(parts, tensor.detach().contiguous())
    return parts


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])


def _ddp_checks(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {}

    # One step with the same noise on both ranks: the DDP gradient must equal the
    # single-process gradient on the combined batch (data term averaged, KL counted once).
    model = _model(0)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    x, y = (part.chunk(WORLD)[rank] for part in _batch(0))
    torch.manual_seed(7)
    _loss(ddp(x), y, model.kl_divergence()).backward()
    results["grads"] = {name: p.grad.clone() for name, p in model.named_parameters()}

    # Training: different initialisations and per-rank noise.
    model = _model(10 + rank)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    results["initial"] = _gathered(_flat(model))
    bnn.seed_per_rank(100)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.05)
    samples = []
    for step in range(STEPS):
        x, y = (part.chunk(WORLD)[rank] for part in _batch(step))
        optimizer.zero_grad()
        _loss(ddp(x), y, model.kl_divergence()).backward()
        results.setdefault("missing_grads", []).extend(
            name for name, p in model.named_parameters() if p.grad is None
        )
        optimizer.step()
        samples.append(model.module[0].parametrizations.weight[0].last_sample.clone())
    results["final"] = _gathered(_flat(model))
    results["samples"] = [_gathered(sample) for sample in samples]
    results["parameter_names"] = [name for name, _ in ddp.named_parameters()]
    return results


def _fsdp_checks(rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    results: dict[str, Any] = {}
    x, y = (part.chunk(WORLD)[rank] for part in _batch(0))

    # Whole model as one FSDP unit; the KL is computed inside the forward on unsharded weights.
    model = _model(0)
    wrapped = _WithKL(model)
    fully_shard(wrapped, mesh=mesh)
    results["sharded"] = all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
    torch.manual_seed(7)
    output, kl = wrapped(x)
    results["kl_root"] = kl.detach().clone()
    _loss(output, y, kl).backward()
    results["grads_root"] = {name: p.grad.full_tensor().clone() for name, p in model.named_parameters()}

    # One FSDP unit per layer; the KL is computed after the forward on the sharded weights.
    model = _model(0)
    for layer in model.module:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    torch.manual_seed(7)
    output = model(x)
    kl = model.kl_divergence().full_tensor()
    results["kl_layers"] = kl.detach().clone()
    _loss(output, y, kl).backward()
    results["grads_layers"] = {name: p.grad.full_tensor().clone() for name, p in model.named_parameters()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    results["stepped"] = {name: p.detach().full_tensor().clone() for name, p in model.named_parameters()}
    return results


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    results = {"ddp": _ddp_checks(rank), "fsdp": _fsdp_checks(rank)}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    # Both ranks leave their collectives together, so neither tears down the gloo pairs (or rank 0
    # the TCP store) while the other still uses them.
    dist.barrier()
    dist.destroy_process_group()


def _launch(out: Path) -> list[dict[str, Any]]:
    return run_workers(__file__, out, world=WORLD, timeout_s=TIMEOUT_S)


def _single_process_grads(model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    model = _model(0) if model is None else model
    x, y = _batch(0)
    torch.manual_seed(7)
    _loss(model(x), y, model.kl_divergence()).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _launch(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def ddp_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [result["ddp"] for result in results]


@pytest.fixture(scope="module")
def fsdp_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [result["fsdp"] for result in results]


def test_ddp_gradient_equals_single_process_on_combined_batch(ddp_results: list[dict[str, Any]]) -> None:
    reference = _single_process_grads()
    for result in ddp_results:
        assert result["grads"].keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_counts_kl_once() -> None:
    # The rho gradient of the single-process loss is data term + KL term; a KL summed over ranks
    # (loss nll + kl / N on each rank, gradients summed instead of averaged) would double it.
    model = _model(0)
    x, y = _batch(0)
    torch.manual_seed(7)
    (model.kl_divergence() / N).backward()
    kl_grad = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(7)
    F.mse_loss(model(x), y).backward()
    reference = _single_process_grads()
    for name, grad in reference.items():
        torch.testing.assert_close(model.get_parameter(name).grad + kl_grad[name], grad, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(model.get_parameter(name).grad + 2 * kl_grad[name], grad)


def test_ddp_keeps_variational_parameters_identical(ddp_results: list[dict[str, Any]]) -> None:
    initial = ddp_results[0]["initial"]
    final = ddp_results[0]["final"]
    assert torch.equal(initial[0], initial[1])  # DDP broadcast rank 0's initialisation
    assert torch.equal(final[0], final[1])
    assert not torch.equal(initial[0], final[0])  # training moved them


def test_ddp_ranks_draw_different_noise(ddp_results: list[dict[str, Any]]) -> None:
    for gathered in ddp_results[0]["samples"]:
        assert not torch.equal(gathered[0], gathered[1])


def test_ddp_has_no_unused_or_placeholder_parameter(ddp_results: list[dict[str, Any]]) -> None:
    names = ddp_results[0]["parameter_names"]
    assert ddp_results[0]["missing_grads"] == []
    assert names and all(name.endswith((".mu", ".rho")) for name in names)
    assert not any("original" in name for name in names)


def test_fsdp_kl_and_gradient_equal_single_process(fsdp_results: list[dict[str, Any]]) -> None:
    model = _model(0)
    kl = model.kl_divergence().detach()
    reference = _single_process_grads(model)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for result in fsdp_results:
        assert result["sharded"]
        torch.testing.assert_close(result["kl_root"], kl)
        torch.testing.assert_close(result["kl_layers"], kl)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(result["stepped"][name], parameter.detach(), rtol=1e-5, atol=1e-6)
        for key in ("grads_root", "grads_layers"):
            for name, grad in reference.items():
                torch.testing.assert_close(result[key][name], grad, rtol=1e-5, atol=1e-6, msg=f"{key} {name}")


def test_seed_per_rank_without_process_group() -> None:
    assert bnn.seed_per_rank(3) == 3
    first = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(first, torch.rand(4))
    with pytest.raises(TypeError, match="seed must be an int"):
        bnn.seed_per_rank(1.5)  # type: ignore[arg-type]
