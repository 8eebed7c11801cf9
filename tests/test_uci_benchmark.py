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

from benchmarks import _stacked, uci

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
