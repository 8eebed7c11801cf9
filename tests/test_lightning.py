"""Lightning integration: ELBO training with the right N, logging, MC evaluation, KL warm-up and DDP on CPU."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.process_group import run_workers
from torchbayesian import bnn

L = pytest.importorskip("lightning")

from torchbayesian.integrations.lightning import _auroc

WORLD = 2
N = 16  # training examples; each DDP rank sees a batch of 4 per step
TIMEOUT_S = 240


def _model(seed: int = 0, sigma: float = 0.1) -> bnn.BayesianModule:
    torch.manual_seed(seed)
    return bnn.BayesianModule(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), sigma_init=sigma)


def _data(n: int = N, seed: int = 1) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long())


def _trainer(tmp_path: Path, **kwargs: Any) -> Any:
    options = {
        "accelerator": "cpu", "devices": 1, "default_root_dir": tmp_path, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "logger": L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
    }
    return L.Trainer(**{**options, **kwargs})


class _Record(L.Callback):
    """Keep the loss and the logged step metrics of every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if name.endswith("_step")}
        self.steps.append({"loss": float(outputs["loss"]), "step": pl_module.global_step, **metrics})


def test_fit_two_epochs_logs_nll_kl_elbo_and_loss_is_nll_plus_kl_over_n(tmp_path: Path) -> None:
    record = _Record()
    module = bnn.BayesianLightningModule(_model(), lr=1e-2)
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[record], log_every_n_steps=1)
    trainer.fit(module, DataLoader(_data(), batch_size=4, shuffle=True))
    assert len(record.steps) == 2 * N // 4
    for step in record.steps:
        expected = step["train/nll_step"] + step["train/kl_step"] / N
        assert step["loss"] == pytest.approx(expected, rel=1e-5)
        assert step["train/elbo_step"] == pytest.approx(-expected, rel=1e-5)
        assert step["train/kl_weight_step"] == pytest.approx(1 / N)
    assert record.steps[0]["train/kl_step"] != record.steps[-1]["train/kl_step"]  # trained
    with open(next((tmp_path / "logs").rglob("metrics.csv"))) as file:
        columns = set(next(csv.reader(file)))
    assert {"train/nll_epoch", "train/kl_epoch", "train/elbo_epoch", "train/loss_step"} <= columns
    # The progress bar shows the data NLL and the KL separately, beside the loss.
    assert {"train/nll_step", "train/kl_step", "train/loss_step"} <= set(trainer.progress_bar_metrics)
    assert "train/elbo_step" not in trainer.progress_bar_metrics


def test_train_size_argument_and_kl_warmup(tmp_path: Path) -> None:
    record = _Record()
    module = bnn.BayesianLightningModule(_model(), train_size=1000, kl_warmup_steps=4)
    trainer = _trainer(tmp_path, max_steps=6, callbacks=[record], log_every_n_steps=1)
    trainer.fit(module, DataLoader(_data(), batch_size=4))
    weights = [step["train/kl_weight_step"] for step in record.steps]
    assert weights == pytest.approx([0.0, 0.25 / 1000, 0.5 / 1000, 0.75 / 1000, 1 / 1000, 1 / 1000])
    first = record.steps[0]
    assert first["loss"] == pytest.approx(first["train/nll_step"], rel=1e-6)  # no KL in the first step


class _LearningRates(L.Callback):
    """Keep the learning rate each optimizer step used."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_kl_temperature_scales_the_kl_weight_and_cosine_anneals_the_rate_to_zero(tmp_path: Path) -> None:
    record, rates = _Record(), _LearningRates()
    module = bnn.BayesianLightningModule(_model(), train_size=1000, kl_temperature=0.1, lr=1e-2, lr_schedule="cosine")
    trainer = _trainer(tmp_path, max_epochs=2, callbacks=[record, rates], log_every_n_steps=1)
    trainer.fit(module, DataLoader(_data(), batch_size=4))
    steps = 2 * N // 4
    for step in record.steps:
        assert step["train/kl_weight_step"] == pytest.approx(0.1 / 1000)
        assert step["loss"] == pytest.approx(step["train/nll_step"] + 0.1 * step["train/kl_step"] / 1000, rel=1e-5)
        # The ELBO logged is the untempered one.
        assert step["train/elbo_step"] == pytest.approx(-(step["train/nll_step"] + step["train/kl_step"] / 1000), rel=1e-5)
    expected = [0.5 * 1e-2 * (1 + math.cos(math.pi * k / steps)) for k in range(steps)]
    assert rates.rates == pytest.approx(expected, rel=1e-6)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_keeps_the_learning_rate(tmp_path: Path) -> None:
    rates = _LearningRates()
    module = bnn.BayesianLightningModule(_model(), lr=1e-2)
    _trainer(tmp_path, max_epochs=2, callbacks=[rates]).fit(module, DataLoader(_data(), batch_size=4))
    assert rates.rates == [1e-2] * (2 * N // 4)


@pytest.mark.parametrize("temperature", [-1, -0.1, float("inf"), float("nan"), True, "0.1"])
def test_invalid_kl_temperature_is_rejected(temperature: Any) -> None:
    with pytest.raises(ValueError, match="^BayesianLightningModule: kl_temperature must be a finite non-negative"):
        bnn.BayesianLightningModule(_model(), kl_temperature=temperature)


def test_kl_temperature_zero_drops_the_kl_from_the_loss(tmp_path: Path) -> None:
    record = _Record()
    module = bnn.BayesianLightningModule(_model(), kl_temperature=0)
    assert module.kl_temperature == 0.0
    trainer = _trainer(tmp_path, max_steps=2, callbacks=[record], log_every_n_steps=1)
    trainer.fit(module, DataLoader(_data(), batch_size=4))
    for step in record.steps:
        assert step["train/kl_weight_step"] == 0.0
        assert step["train/kl_step"] > 0  # still computed and logged
        assert step["loss"] == step["train/nll_step"]


def test_cosine_schedule_without_an_end_is_rejected(tmp_path: Path) -> None:
    module = bnn.BayesianLightningModule(_model(), lr_schedule="cosine")
    with pytest.raises(ValueError, match="give the Trainer max_epochs or max_steps"):
        _trainer(tmp_path, max_epochs=-1).fit(module, DataLoader(_data(), batch_size=4))


def test_unknown_lr_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="lr_schedule must be one of 'constant', 'cosine', got 'linear'"):
        bnn.BayesianLightningModule(_model(), lr_schedule="linear")


def test_mc_validation_metrics_match_an_independent_computation(tmp_path: Path) -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    model = _model(sigma=1e-6)  # (nearly) deterministic, so the MC metrics can be recomputed exactly
    data, ood = _data(64, seed=2), _data(32, seed=3)
    ood_inputs = ood.tensors[0] * 4
    module = bnn.BayesianLightningModule(model, num_samples=4, num_bins=10)
    loaders = [DataLoader(data, batch_size=16), DataLoader(TensorDataset(ood_inputs), batch_size=16)]
    results = _trainer(tmp_path).validate(module, dataloaders=loaders, verbose=False)
    metrics = results[0]  # one dict per dataloader, each with the epoch-level metrics
    assert set(metrics) == {"val/accuracy", "val/nll", "val/ece", "val/ood_auroc"}
    (tested,) = _trainer(tmp_path).test(module, dataloaders=loaders[:1], verbose=False)
    x, y = data.tensors
    with torch.no_grad(), bnn.frozen(model):
        probs, ood_probs = model(x).softmax(-1), model(ood_inputs).softmax(-1)
    assert metrics["val/accuracy"] == pytest.approx((probs.argmax(-1) == y).float().mean().item(), abs=1e-6)
    assert metrics["val/nll"] == pytest.approx(F.nll_loss(probs.log(), y).item(), rel=1e-4)
    assert metrics["val/ece"] == pytest.approx(
        bnn.expected_calibration_error(probs, y, num_bins=10).item(), abs=1e-4)
    scores = torch.cat([bnn.entropy(probs[None]), bnn.entropy(ood_probs[None])])
    labels = torch.cat([torch.zeros(len(x)), torch.ones(len(ood_inputs))])
    assert metrics["val/ood_auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-4)
    assert set(tested) == {"test/accuracy", "test/nll", "test/ece"}
    assert tested["test/accuracy"] == pytest.approx(metrics["val/accuracy"])


def test_auroc_with_ties_matches_sklearn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(0)
    negatives = torch.randint(0, 5, (40,), generator=generator).float()
    positives = torch.randint(2, 8, (25,), generator=generator).float()
    labels = torch.cat([torch.zeros(40), torch.ones(25)])
    expected = sklearn_metrics.roc_auc_score(labels, torch.cat([negatives, positives]))
    assert float(_auroc(negatives, positives)) == pytest.approx(expected, abs=1e-6)


def test_errors_and_lazy_import(tmp_path: Path, run_python: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        bnn.BayesianLightningModule(_model(), num_samples=0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        bnn.BayesianLightningModule("net")  # type: ignore[arg-type]
    module = bnn.BayesianLightningModule(_model())
    stream = _Stream()
    with pytest.raises(ValueError, match="pass train_size=N"):
        _trainer(tmp_path, max_steps=1).fit(module, DataLoader(stream, batch_size=4))
    lazy = ("import sys\nfrom torchbayesian import bnn\nloaded = 'lightning' in sys.modules\n"
            "print(loaded, 'BayesianLightningModule' in dir(bnn), bnn.BayesianLightningModule.__module__)")
    assert run_python(lazy).split() == ["False", "True", "torchbayesian.integrations.lightning"]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        data = _data()
        return iter(zip(*data.tensors))


# --- DDP: two gloo processes launched like torchrun (LOCAL_RANK set, so Lightning does not spawn) ---


class _Capture(L.Callback):
    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.result["seed"] = torch.initial_seed()
        self.result["batch"] = [part.clone() for part in batch]
        torch.manual_seed(7)  # the same weight noise on both ranks and in the single-process reference

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.result["grads"] = {name: p.grad.clone() for name, p in pl_module.model.named_parameters()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      NODE_RANK="0", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    capture = _Capture()
    module = bnn.BayesianLightningModule(_model(), num_samples=2)
    trainer = L.Trainer(
        accelerator="cpu", devices=WORLD, strategy="ddp", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out,
        callbacks=[capture],
    )
    trainer.fit(module, DataLoader(_data(), batch_size=4, shuffle=False))
    (metrics,) = trainer.validate(module, DataLoader(_data(12, seed=5), batch_size=3), verbose=False)
    capture.result["validation"] = metrics
    torch.save(capture.result, Path(out) / f"rank{rank}.pt")
    # Lightning leaves its process group open; a gloo group still alive at interpreter exit can abort
    # the worker ("terminate called without an active exception"). The barrier makes both ranks
    # tear it down together.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("lightning_ddp")
    return run_workers(__file__, out, world=WORLD, timeout_s=TIMEOUT_S, weights_only=False)


def test_ddp_gradient_equals_single_process_on_combined_batch(ddp_results: list[dict[str, Any]]) -> None:
    x = torch.cat([result["batch"][0] for result in ddp_results])
    y = torch.cat([result["batch"][1] for result in ddp_results])
    assert len(x) == 8 and not torch.equal(ddp_results[0]["batch"][0], ddp_results[1]["batch"][0])
    model = _model()
    torch.manual_seed(7)
    loss = F.cross_entropy(model(x), y) + model.kl_divergence() / N  # KL once, N = the whole set
    loss.backward()
    for result in ddp_results:
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(result["grads"][name], parameter.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_ranks_reseed_and_validate_over_all_ranks(ddp_results: list[dict[str, Any]]) -> None:
    assert ddp_results[1]["seed"] == ddp_results[0]["seed"] + 1  # per-rank weight noise
    first, second = (result["validation"] for result in ddp_results)
    assert set(first) == {"val/accuracy", "val/nll", "val/ece"}
    assert first == second  # metrics computed on the examples gathered from both ranks
