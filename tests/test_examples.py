import ast
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.example_checks import EXAMPLES, figure_problems, quoted_numbers, unprinted_quotes

ROOT = Path(__file__).resolve().parents[1]
_VALUE = r"(\d+\.\d+)±(\d+\.\d+)"
METRICS = re.compile(
    rf"^(bayesian|mc_dropout|deterministic) accuracy={_VALUE} nll={_VALUE} ece={_VALUE} "
    rf"ood_auroc={_VALUE} ood_aupr={_VALUE} ood_fpr95={_VALUE}$",
    re.MULTILINE,
)
VERDICT = re.compile(r"^bayesian better than deterministic: ((?:\w+=(?:yes|no) ?)+)$", re.MULTILINE)
CALIBRATION = re.compile(
    r"^calibration test (bayesian|mc_dropout|deterministic) ece=(\d+\.\d+) if_calibrated=(\d+\.\d+) p_value=(\d+\.\d+)$",
    re.MULTILINE,
)
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
    tests = {name: [float(v) for v in values] for name, *values in CALIBRATION.findall(stdout)}
    assert set(tests) == set(rows), stdout
    for name, (ece, if_calibrated, p_value) in tests.items():
        assert ece == round(rows[name][4], 4)  # the same ECE as the metrics line
        assert 0.0 < if_calibrated < 1.0 and 0.0 < p_value <= 1.0, (name, stdout)
    assert not unprinted_quotes("digits.py", stdout), "digits.py's docstring quotes output it does not print"
    for name in ("reliability_diagram.png", "uncertainty_histogram.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_chooses_the_kl_temperature_on_validation_data_only(monkeypatch):
    digits = _import_example("digits.py")
    data = digits.load_data(0)
    seen = []
    real_train = digits.train

    def spy(model, part, **kwargs):
        seen.append((len(part["x_train"]), kwargs["temperature"]))
        return real_train(model, part, **kwargs)

    monkeypatch.setattr(digits, "train", spy)
    chosen = digits.choose_temperature(data, temperatures=[1.0, 0.1], epochs=2, seed=0, sigma_init=1e-3,
                                       warmup=0.0, samples=4)
    fit_size = len(data["x_train"]) - math.ceil(0.2 * len(data["x_train"]))  # scikit-learn rounds the test part up
    assert chosen in (1.0, 0.1) and seen == [(fit_size, 1.0), (fit_size, 0.1)]  # never the whole training set
    assert digits.choose_temperature(data, temperatures=[0.3], epochs=2, seed=0, sigma_init=1e-3,
                                     warmup=0.0, samples=4) == 0.3 and len(seen) == 2  # one candidate: no training


@pytest.mark.parametrize("posterior", ["gaussian", "flipout", "lrt"])
@pytest.mark.parametrize("prior", ["gaussian", "scale-mixture"])
def test_digits_builds_the_posterior_and_prior_it_is_asked_for(posterior, prior):
    digits = _import_example("digits.py")
    model = digits.make_model("bayesian", dropout=0.0, sigma_init=1e-3, posterior=posterior, prior=prior)
    built = [q for _, q in model.posteriors()]
    assert len(built) == 6
    assert all(type(q) is digits.POSTERIORS[posterior] and type(q.prior) is digits.PRIORS[prior] for q in built)
    assert model(torch.randn(5, 64)).shape == (5, digits.IN_DISTRIBUTION)


@pytest.mark.parametrize(("schedule", "final_lr"), [("constant", 3e-3), ("cosine", 0.0)])
def test_digits_anneals_the_learning_rate_only_when_asked(monkeypatch, schedule, final_lr):
    digits = _import_example("digits.py")
    data = digits.load_data(0)
    data = {key: value[:130] for key, value in data.items()}  # three mini-batches per epoch
    built = []
    real_adam = torch.optim.Adam

    def recording_adam(*args, **kwargs):
        built.append(real_adam(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    model = digits.make_model("deterministic", dropout=0.0, sigma_init=1e-3)
    digits.train(model, data, name="deterministic", epochs=2, seed=0, warmup=0.0, empirical_bayes=False,
                 schedule=schedule)
    assert len(built) == 1 and built[0].param_groups[0]["lr"] == pytest.approx(final_lr, abs=1e-12)


def _import_example(script: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(script).stem}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_thread")
def test_regression_quick_widens_epistemic_band_away_from_data(tmp_path, capsys, monkeypatch):
    regression = _import_example("regression.py")
    figures = []
    plot = regression.plot
    monkeypatch.setattr(regression, "plot", lambda *args: figures.append(plot(*args)) or figures[-1])
    returned = regression.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr()
    spread = {where: (float(e), float(a)) for where, e, a in SPREAD.findall(printed.out)}
    assert set(spread) == {"inside", "outside"}, printed.out
    assert spread == {where: (round(s["epistemic_std"], 4), round(s["aleatoric_std"], 4))
                      for where, s in returned.items()}
    assert all(e > 0 and a > 0 for e, a in spread.values())
    assert spread["outside"][0] > spread["inside"][0]
    assert (tmp_path / "regression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not unprinted_quotes("regression.py", printed.out)
    # The progress bar shows the data term and the KL separately.
    assert re.search(r"data_nll=-?\d+\.\d+, kl=\d+", printed.err), printed.err[-500:]
    assert len(figures) == 1 and not figure_problems(figures[0]), figure_problems(figures[0])


@pytest.mark.parametrize("script", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_example_docstrings_quote_no_measured_numbers(script: str) -> None:
    # A number measured once goes stale; docstrings show the printed format (``name=...``) instead.
    assert not quoted_numbers(script), f"{script}'s docstring quotes measured numbers: {quoted_numbers(script)}"


def test_figure_check_catches_a_legend_over_the_data() -> None:
    regression = _import_example("regression.py")
    x, y = regression.make_data(100, torch.Generator().manual_seed(0))
    grid = torch.linspace(-5, 5, 101).unsqueeze(-1)
    center = torch.sin(2 * grid).squeeze(-1)
    fig = regression.plot(x, y, grid, center, torch.full_like(center, 0.1), torch.full_like(center, 0.3))
    assert not figure_problems(fig)
    fig.axes[0].legend(loc="center")
    fig.axes[0].set_ylabel("")
    problems = figure_problems(fig)
    assert any("no y-axis label" in problem for problem in problems), problems
    assert any("the legend covers line 'predictive mean'" in problem for problem in problems), problems


def test_digits_help_runs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "digits.py"), "--help"],
                            capture_output=True, text=True, env=env, check=True)
    assert "--quick" in result.stdout and "--out" in result.stdout


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "benchmarks").glob("[!_]*.py")))
def test_benchmark_flags_have_help_text(script: str) -> None:
    tree = ast.parse((ROOT / "benchmarks" / script).read_text())
    flags = [
        call for call in ast.walk(tree)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "add_argument"
    ]
    assert flags, f"{script} defines no command-line flags"
    silent = [ast.literal_eval(call.args[0]) for call in flags if not any(k.arg == "help" for k in call.keywords)]
    assert not silent, f"{script}: flags without help text: {silent}"


def test_step_budget_accounts_for_the_bayesian_step() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_budget.py"), "--steps", "3"],
                            capture_output=True, text=True, env=env, check=True, timeout=300)
    times = dict(re.findall(r"^\s*(.+?):\s+([\d.]+) ms$", result.stdout, flags=re.MULTILINE))
    ratios = dict(re.findall(r"^(Bayesian / deterministic step|with free draws).*: ([\d.]+)$", result.stdout, flags=re.MULTILINE))
    assert set(times) == {"deterministic step", "Bayesian step", "Adam on P", "Adam on 2P", "add over P"}, result.stdout
    assert float(times["Adam on 2P"]) > float(times["Adam on P"]) > 0
    assert float(ratios["Bayesian / deterministic step"]) > float(ratios["with free draws"]) > 1.0
