import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_VALUE = r"(\d+\.\d+)±(\d+\.\d+)"
METRICS = re.compile(
    rf"^(bayesian|mc_dropout|deterministic) accuracy={_VALUE} nll={_VALUE} ece={_VALUE} "
    rf"ood_auroc={_VALUE} ood_aupr={_VALUE} ood_fpr95={_VALUE}$",
    re.MULTILINE,
)
VERDICT = re.compile(r"^bayesian better than deterministic: ((?:\w+=(?:yes|no) ?)+)$", re.MULTILINE)
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
    rows = {name: [float(v) for v in values] for name, *values in METRICS.findall(stdout)}
    assert set(rows) == {"bayesian", "mc_dropout", "deterministic"}, stdout
    for name, values in rows.items():
        accuracy, nll, ece, auroc, aupr, fpr = values[0::2]
        assert accuracy > 0.8, (name, accuracy)  # chance is 1/8
        assert 0.0 < nll < 1.0
        assert 0.0 <= ece <= 1.0
        assert 0.5 < auroc <= 1.0, (name, auroc)  # better than chance at telling 8-9 from 0-7
        assert 0.0 <= aupr <= 1.0 and 0.0 <= fpr <= 1.0
        assert values[1::2] == [0.0] * 6  # one seed in the quick mode: no spread
    verdict = dict(item.split("=") for item in VERDICT.search(stdout).group(1).split())
    assert set(verdict) == {"nll", "ece", "ood_auroc", "ood_aupr", "ood_fpr95"}
    # The verdict is computed from the printed means.
    for metric, index, higher in (("nll", 2, False), ("ece", 4, False), ("ood_auroc", 6, True)):
        bayes, plain = rows["bayesian"][index], rows["deterministic"][index]
        if bayes != plain:
            assert verdict[metric] == ("yes" if (bayes > plain) == higher else "no"), (metric, stdout)
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
