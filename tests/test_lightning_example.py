"""The Lightning digits example runs end to end and prints sane test metrics for both models.

It runs in this process (``runpy``), so the test does not pay for importing Lightning again.
"""

import re
import runpy
import sys
from pathlib import Path

import pytest

from tests.example_checks import unprinted_quotes

pytest.importorskip("lightning")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
METRICS = re.compile(r"^(bayesian|mc_dropout) accuracy=(\S+) nll=(\S+) ece=(\S+) ood_auroc=(\S+)$", re.MULTILINE)


@pytest.mark.usefixtures("one_thread")
def test_lightning_digits_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    script = ROOT / "examples" / "lightning_digits.py"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--quick"])
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything sets it; restored after the test
    runpy.run_path(str(script), run_name="__main__")
    stdout = capsys.readouterr().out
    metrics = {name: [float(v) for v in values] for name, *values in METRICS.findall(stdout)}
    assert set(metrics) == {"bayesian", "mc_dropout"}, stdout
    assert not unprinted_quotes("lightning_digits.py", stdout), "the docstring quotes output the script does not print"
    for name, (accuracy, nll, ece, auroc) in metrics.items():
        assert accuracy > 0.7, (name, accuracy)  # chance is 1/8
        assert 0.0 < nll < 1.5 and 0.0 <= ece <= 1.0 and 0.5 < auroc <= 1.0, (name, nll, ece, auroc)
    assert not (tmp_path / "lightning_logs").exists()  # logger=False: nothing written beside the user's files
