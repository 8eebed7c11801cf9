import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = re.compile(r"^(bayesian|deterministic) accuracy=(\S+) nll=(\S+) ece=(\S+) ood_auroc=(\S+)$", re.MULTILINE)
SPREAD = re.compile(r"^(inside|outside) epistemic_std=(\S+) aleatoric_std=(\S+)$", re.MULTILINE)


def _run(script: str, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_digits_quick_prints_sane_metrics_and_writes_plots(tmp_path):
    stdout = _run("digits.py", tmp_path)
    metrics = {name: [float(v) for v in values] for name, *values in METRICS.findall(stdout)}
    assert set(metrics) == {"bayesian", "deterministic"}, stdout
    for name, (accuracy, nll, ece, auroc) in metrics.items():
        assert accuracy > 0.8, (name, accuracy)  # chance is 1/8
        assert 0.0 < nll < 1.0
        assert 0.0 <= ece <= 1.0
        assert 0.0 <= auroc <= 1.0
    assert metrics["bayesian"][3] > 0.5
    for name in ("reliability_diagram.png", "uncertainty_histogram.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_quick_widens_epistemic_band_away_from_data(tmp_path):
    stdout = _run("regression.py", tmp_path)
    spread = {where: (float(e), float(a)) for where, e, a in SPREAD.findall(stdout)}
    assert set(spread) == {"inside", "outside"}, stdout
    assert all(e > 0 and a > 0 for e, a in spread.values())
    assert spread["outside"][0] > spread["inside"][0]
    assert (tmp_path / "regression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_help_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), "--help"],
                            capture_output=True, text=True, env=env, check=True)
    assert "--quick" in result.stdout and "--out" in result.stdout
