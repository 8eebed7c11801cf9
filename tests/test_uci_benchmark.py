"""The UCI benchmark script: data layout, output contract, and the metrics its tables rest on."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import _recipe, _stacked, uci
from torchbayesian import bnn

ROOT = Path(__file__).resolve().parents[1]


def _write_dataset(folder: Path, rows: int = 60, splits: int = 3, unequal: bool = False) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(rows, generator=generator)
    folder.mkdir(parents=True)
    # The target sits between feature columns, as in some UCI files.
    data = torch.cat([x[:, :2], y[:, None], x[:, 2:]], dim=1)
    (folder / "data.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in data.tolist()))
    (folder / "index_features.txt").write_text("0\n1\n3\n")
    (folder / "index_target.txt").write_text("2\n")
    for k in range(splits):
        order = torch.randperm(rows, generator=generator).tolist()
        n_test = 6 + (k if unequal else 0)
        (folder / f"index_train_{k}.txt").write_text("\n".join(map(str, order[n_test:])))
        (folder / f"index_test_{k}.txt").write_text("\n".join(map(str, order[:n_test])))


def test_load_splits_reads_the_layout(tmp_path):
    _write_dataset(tmp_path / "toy")
    splits = uci.load_splits(tmp_path, "toy", None)
    assert len(splits) == 3
    assert splits[0]["x_train"].shape == (54, 3) and splits[0]["y_test"].shape == (6,)
    assert len(uci.load_splits(tmp_path, "toy", 2)) == 2
    with pytest.raises(FileNotFoundError, match="no data.txt"):
        uci.load_splits(tmp_path, "missing", None)


def test_repository_layout_and_protocol_hidden_units(tmp_path):
    # The UCI_Datasets repository keeps the files in <name>/data/, with n_hidden.txt beside them.
    _write_dataset(tmp_path / "toy" / "data")
    assert len(uci.load_splits(tmp_path, "toy", None)) == 3
    assert uci.default_hidden(uci.dataset_folder(tmp_path, "toy"), "toy") == 50
    (tmp_path / "toy" / "data" / "n_hidden.txt").write_text("100\n")
    assert uci.default_hidden(uci.dataset_folder(tmp_path, "toy"), "toy") == 100
    _write_dataset(tmp_path / "protein-tertiary-structure")
    assert uci.default_hidden(tmp_path / "protein-tertiary-structure", "protein-tertiary-structure") == 100


def test_script_prints_a_table_and_one_json_line_per_method(tmp_path):
    _write_dataset(tmp_path / "toy", unequal=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "uci.py"), "--data-dir", str(tmp_path), "--dataset", "toy",
         "--splits", "2", "--epochs", "4", "--eval-every", "2", "--test-samples", "8"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    table = lines.index("|---|---|---|")
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert min(i for i, line in enumerate(lines) if line.startswith("{")) > table
    assert [row["method"] for row in rows] == ["torchbayesian", "mc_dropout", "deterministic"]
    for row in rows:
        assert set(row) == {"method", "dataset", "splits", "rmse", "rmse_se", "ll", "ll_se"}
        assert row["dataset"] == "toy" and row["splits"] == 2
        assert row["rmse"] > 0 and row["rmse_se"] >= 0 and math.isfinite(row["ll"]) and row["ll_se"] >= 0


class _Fixed(nn.Module):
    """Returns stored (mean, log-variance) draws regardless of the input."""

    def __init__(self, mean: torch.Tensor, log_var: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.log_var = mean, log_var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.log_var


def test_scores_are_the_mixture_log_likelihood_in_original_units():
    generator = torch.Generator().manual_seed(1)
    mean, log_var = torch.randn(2, 5, generator=generator), torch.randn(2, 5, generator=generator)
    y = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    y_mean, y_std = torch.tensor([[3.0], [-1.0]], dtype=torch.float64), torch.tensor([[2.0], [0.5]], dtype=torch.float64)
    rmse, ll = _stacked._scores(_Fixed(mean, log_var), "deterministic", torch.zeros(2, 5, 1), y, mask, y_mean, y_std, 1)
    for k, n in ((0, 5), (1, 3)):
        normal = torch.distributions.Normal(mean[k, :n].double() * y_std[k] + y_mean[k],
                                            (0.5 * log_var[k, :n].double()).exp() * y_std[k])
        assert ll[k].item() == pytest.approx(normal.log_prob(y[k, :n]).mean().item(), rel=1e-10)
        assert rmse[k].item() == pytest.approx((normal.mean - y[k, :n]).square().mean().sqrt().item(), rel=1e-10)


def test_summarise_reports_the_standard_error():
    mean, se = uci.summarise([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item() / 2)


def test_recipe_chooses_the_noise_model_of_each_split_on_validation(tmp_path):
    _write_dataset(tmp_path / "toy")
    splits = uci.load_splits(tmp_path, "toy", 2)
    recipe = _recipe.Recipe(noise=("heteroscedastic", "homoscedastic"))
    options = _stacked.candidates("torchbayesian", recipe)
    assert [(o.name, o.heteroscedastic) for o in options] == [("heteroscedastic", True), ("homoscedastic", False)]
    tempered = _stacked.candidates("torchbayesian", _recipe.Recipe(noise=("homoscedastic",), temperatures=(1.0, 0.3)))
    assert [(o.name, o.temperature) for o in tempered] == [("homoscedastic, T=1", 1.0), ("homoscedastic, T=0.3", 0.3)]
    net = _stacked.StackedMLP(2, 3, 4, heteroscedastic=torch.tensor([True, False]), dropout=torch.zeros(2))
    _, log_var = net(torch.randn(2, 5, 3))
    assert log_var[1].unique().numel() == 1 and log_var[0].unique().numel() == 5  # one noise level vs per input
    settings = _stacked.TrainSettings(epochs=4, eval_every=2, batch_size=16, validation=0.2, test_samples=4,
                                      hidden=4, seed=0, recipe=recipe)
    results = _stacked.run_method("torchbayesian", splits, settings)
    assert len(results) == 2 and all(r["chosen"] in ("heteroscedastic", "homoscedastic") for r in results)


def test_every_method_chooses_its_learning_rate_per_split_and_each_rate_trains_its_own_model(tmp_path):
    _write_dataset(tmp_path / "toy")
    splits = uci.load_splits(tmp_path, "toy", 2)
    options = _stacked.candidates("deterministic", _recipe.Recipe(), (1e-3, 1e-2))
    assert [(o.name, o.lr) for o in options] == [("deterministic, lr=0.001", 1e-3), ("deterministic, lr=0.01", 1e-2)]
    settings = _stacked.TrainSettings(epochs=4, eval_every=2, batch_size=16, validation=0.2, test_samples=4,
                                      hidden=4, seed=0, lrs=(1e-3, 1e-2))
    parts = [{"x": split["x_train"], "y": split["y_train"]} for split in splits]
    tests = [{"x": split["x_test"], "y": split["y_test"]} for split in splits]
    together = _stacked._train_grouped("deterministic", [options[0], options[1]], parts, tests, settings, stop=[4, 2])
    alone = _stacked._train("deterministic", [options[1]], parts[1:], tests[1:], settings, stop=[2])
    torch.testing.assert_close(together[1], alone[0])  # the lr=0.01 network, trained in its own model
    results = _stacked.run_method("deterministic", splits, settings)
    assert all(r["chosen"] in ("deterministic, lr=0.001", "deterministic, lr=0.01") for r in results)


@pytest.mark.parametrize("method", ["mc_dropout", "torchbayesian"])
def test_scores_in_several_passes_equal_one_pass(method):
    torch.manual_seed(0)
    net = _stacked.StackedMLP(2, 3, 4, heteroscedastic=torch.tensor([True, False]), dropout=torch.zeros(2))
    model = _recipe.make_bayesian(net, _recipe.Recipe()) if method == "torchbayesian" else net
    x, y = torch.randn(2, 6, 3), torch.randn(2, 6, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    y_mean, y_std = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    calls = []
    net.register_forward_hook(lambda module, args, output: calls.append(output[0].shape))
    with bnn.frozen(model):  # no noise (dropout 0, posterior means), so the passes must reproduce one pass exactly
        one_pass = _stacked._scores(model, method, x, y, mask, y_mean, y_std, 10)
        del calls[:]
        several = _stacked._scores(model, method, x, y, mask, y_mean, y_std, 10, max_elements=3 * 2 * 6 * 4)
    assert len(calls) == 4  # passes of 3, 3, 3 and 1 samples
    for first, second in zip(one_pass, several):
        torch.testing.assert_close(first, second)


def test_local_reparameterization_gives_each_example_of_each_stacked_network_its_own_noise():
    torch.manual_seed(0)
    net = _stacked.StackedMLP(2, 3, 4, heteroscedastic=torch.tensor([True, True]), dropout=torch.zeros(2))
    model = _recipe.make_bayesian(net, _recipe.Recipe(posterior="lrt", sigma_init=0.3))
    assert {type(q) for _, q in model.posteriors()} == {bnn.LocalReparameterizationPosterior}
    layer, x = net.hidden, torch.randn(2, 1, 3).expand(2, 4000, 3)  # one input per network, repeated
    with bnn.frozen(model):
        mean = layer(x)
    outputs = layer(x)  # every example gets its own noise
    weight, bias = layer.parametrizations.weight[0], layer.parametrizations.bias[0]
    variance = torch.baddbmm(bias.sigma.square(), x[:, :1].square(), weight.sigma.square())
    assert outputs.shape == mean.shape == (2, 4000, 4)
    torch.testing.assert_close(outputs.mean(1, keepdim=True), mean[:, :1], atol=0.05, rtol=0)
    torch.testing.assert_close(outputs.var(1, keepdim=True), variance, atol=0, rtol=0.1)
