"""The Lightning digits example runs end to end and prints sane test metrics for both models."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
METRICS = re.compile(r"^(bayesian|mc_dropout) accuracy=(\S+) nll=(\S+) ece=(\S+) ood_auroc=(\S+)$", re.MULTILINE)


def test_lightning_digits_quick(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lightning_digits.py"), "--quick"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {name: [float(v) for v in values] for name, *values in METRICS.findall(result.stdout)}
    assert set(metrics) == {"bayesian", "mc_dropout"}, result.stdout
    for name, (accuracy, nll, ece, auroc) in metrics.items():
        assert accuracy > 0.7, (name, accuracy)  # chance is 1/8
        assert 0.0 < nll < 1.5 and 0.0 <= ece <= 1.0 and 0.5 < auroc <= 1.0, (name, nll, ece, auroc)
    assert not (tmp_path / "lightning_logs").exists()  # logger=False: nothing written beside the user's files
