
import matplotlib
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, log_loss

from torchbayesian import bnn

matplotlib.use("Agg")
SETTINGS = settings(max_examples=20, deadline=None)


def _data(seed: int, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, classes, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return logits, targets


def _ece_loop(probs: torch.Tensor, targets: torch.Tensor, num_bins: int) -> float:
    total = 0.0
    n = len(targets)
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [
            i for i in range(n)
            if (lo < probs[i].max().item() <= hi) or (b == 0 and probs[i].max().item() == 0.0)
        ]
        if members:
            confidence = sum(probs[i].max().item() for i in members) / len(members)
            accuracy = sum(int(probs[i].argmax().item() == targets[i].item()) for i in members) / len(members)
            total += len(members) / n * abs(accuracy - confidence)
    return total


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(1, 60), classes=st.integers(2, 5), num_bins=st.integers(1, 20))
def test_ece_matches_a_loop(seed, n, classes, num_bins):
    logits, targets = _data(seed, n, classes)
    probs = logits.softmax(-1)
    ece = bnn.expected_calibration_error(probs, targets, num_bins=num_bins)
    assert 0.0 <= ece.item() <= 1.0
    assert ece.item() == pytest.approx(_ece_loop(probs, targets, num_bins), abs=1e-12)
    torch.testing.assert_close(bnn.expected_calibration_error(logits, targets, num_bins=num_bins, from_logits=True), ece)


def test_ece_known_values():
    targets = torch.tensor([0, 0, 0, 0])
    assert bnn.expected_calibration_error(torch.tensor([[1.0, 0.0]] * 4), targets).item() == 0.0
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert bnn.expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])).item() == pytest.approx(0.0)
    assert bnn.expected_calibration_error(probs, torch.tensor([1, 1, 1, 1])).item() == pytest.approx(0.75)


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(2, 60), classes=st.integers(2, 5))
def test_nll_matches_sklearn(seed, n, classes):
    logits, targets = _data(seed, n, classes)
    probs = logits.softmax(-1)
    expected = log_loss(targets.numpy(), probs.numpy(), labels=list(range(classes)))
    assert bnn.negative_log_likelihood(probs, targets).item() == pytest.approx(expected, rel=1e-9)
    assert bnn.negative_log_likelihood(logits, targets, from_logits=True).item() == pytest.approx(expected, rel=1e-9)


@SETTINGS
@given(seed=st.integers(0, 2**16), n=st.integers(1, 60), classes=st.integers(2, 5))
def test_brier_matches_a_loop_and_sklearn_for_two_classes(seed, n, classes):
    logits, targets = _data(seed, n, classes)
    probs = logits.softmax(-1)
    loop = sum(
        sum((probs[i, c].item() - float(targets[i].item() == c)) ** 2 for c in range(classes)) for i in range(n)
    ) / n
    score = bnn.brier_score(probs, targets)
    assert score.item() == pytest.approx(loop, rel=1e-9)
    assert bnn.brier_score(logits, targets, from_logits=True).item() == pytest.approx(loop, rel=1e-9)
    if classes == 2:
        binary = brier_score_loss(targets.numpy(), probs[:, 1].numpy())
        assert score.item() == pytest.approx(2 * binary, rel=1e-9)


def test_reliability_curve_counts_every_prediction():
    logits, targets = _data(0, 200, 4)
    curve = bnn.reliability_curve(logits, targets, num_bins=10, from_logits=True)
    assert curve.count.sum().item() == 200
    assert curve.edges.shape == (11,)
    filled = curve.count > 0
    assert ((curve.confidence[filled] > curve.edges[:-1][filled]) & (curve.confidence[filled] <= curve.edges[1:][filled])).all()


def test_metrics_accept_extra_batch_dimensions():
    logits, targets = _data(1, 24, 3)
    flat = bnn.brier_score(logits, targets, from_logits=True)
    torch.testing.assert_close(bnn.brier_score(logits.view(4, 6, 3), targets.view(4, 6), from_logits=True), flat)


def test_reliability_diagram_draws_bars(tmp_path):
    import matplotlib.pyplot as plt

    logits, targets = _data(2, 100, 3)
    ax = bnn.reliability_diagram(logits, targets, num_bins=5, from_logits=True)
    assert len(ax.patches) == 5
    ece = bnn.expected_calibration_error(logits, targets, num_bins=5, from_logits=True).item()
    assert ax.get_title() == f"ECE = {ece:.3f}"
    ax.figure.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0
    plt.close(ax.figure)


def test_bad_inputs_raise():
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        bnn.expected_calibration_error(probs, torch.zeros(3, dtype=torch.long), num_bins=0)
    with pytest.raises(TypeError, match="targets must be an integer Tensor"):
        bnn.brier_score(probs, torch.zeros(3))
    with pytest.raises(ValueError, match=r"probs shape: \(3, 2\)\ntargets shape: \(4,\)"):
        bnn.negative_log_likelihood(probs, torch.zeros(4, dtype=torch.long))


def test_matplotlib_is_not_imported_by_the_package(run_python):
    assert run_python("import sys, torchbayesian.bnn; print('matplotlib' in sys.modules)").strip() == "False"


def test_ece_bins_are_closed_on_the_right():
    # (lo, hi] bins: confidence 0.5 falls in the first of two bins (a correct prediction), 0.7 in the
    # second (a wrong one), so ECE = (|1 - 0.5| + |0 - 0.7|) / 2 = 0.6; [lo, hi) bins would give 0.1.
    probs = torch.tensor([[0.5, 0.5], [0.7, 0.3]])
    targets = torch.tensor([0, 1])
    assert bnn.expected_calibration_error(probs, targets, num_bins=2).item() == pytest.approx(0.6)
    curve = bnn.reliability_curve(probs, targets, num_bins=2)
    assert curve.count.tolist() == [1.0, 1.0]


def _ece_exact(numerators: list[list[int]], denominator: int, targets: list[int], num_bins: int) -> float:
    """ECE in exact rational arithmetic: bin b holds confidences in (b/B, (b+1)/B], bin 0 also 0."""
    from fractions import Fraction
    from math import ceil

    bins: dict[int, list[tuple[Fraction, int]]] = {}
    for row, target in zip(numerators, targets):
        confidence = Fraction(max(row), denominator)
        predicted = row.index(max(row))  # ties: the first maximal class
        index = max(0, ceil(confidence * num_bins) - 1)
        bins.setdefault(index, []).append((confidence, int(predicted == target)))
    total = Fraction(0)
    for members in bins.values():
        gap = abs(sum(Fraction(c) for _, c in members) - sum(conf for conf, _ in members))
        total += gap
    return float(total / len(targets))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_bins=st.sampled_from([1, 2, 4, 8, 16]), classes=st.integers(2, 4))
def test_ece_on_bin_edges_empty_bins_and_ties_matches_exact_arithmetic(data, num_bins, classes):
    # Probabilities are multiples of 1/8, exact in binary floating point, so many confidences sit
    # exactly on bin edges k / num_bins, rows often tie for the top class, and most bins stay empty.
    denominator = 8
    n = data.draw(st.integers(1, 12))
    numerators = []
    for _ in range(n):
        cuts = sorted(data.draw(st.lists(st.integers(0, denominator), min_size=classes - 1, max_size=classes - 1)))
        bounds = [0, *cuts, denominator]
        numerators.append([bounds[i + 1] - bounds[i] for i in range(classes)])
    targets = data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    for dtype in (torch.float32, torch.float64):
        probs = torch.tensor(numerators, dtype=dtype) / denominator
        ece = bnn.expected_calibration_error(probs, torch.tensor(targets), num_bins=num_bins)
        assert ece.item() == pytest.approx(_ece_exact(numerators, denominator, targets, num_bins), abs=1e-6)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _binomial_gap(n: int, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``|K / n - confidence|`` for each K and its binomial probability, K ~ Binomial(n, confidence)."""
    k = torch.arange(n + 1, dtype=torch.float64)
    pmf = torch.distributions.Binomial(n, probs=torch.tensor(confidence, dtype=torch.float64)).log_prob(k).exp()
    return (k / n - confidence).abs(), pmf


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("draws_at_once", [None, 7])
def test_calibration_test_matches_the_exact_binomial_null(device, draws_at_once, monkeypatch):
    # n predictions of one confidence c share one bin, so a calibrated predictor's ECE is |K / n - c|.
    if draws_at_once is not None:  # the draws then come in many chunks
        monkeypatch.setattr("torchbayesian.calibration._DRAWS_ELEMENTS", draws_at_once)
    n, c, draws = 50, 0.7, 20_000
    probs = torch.tensor([[c, 1 - c]], dtype=torch.float64, device=device).repeat(n, 1)
    targets = (torch.arange(n, device=device) >= 40).long()  # 40 of 50 right: ECE |0.8 - 0.7| = 0.1
    result = bnn.calibration_test(probs, targets, num_draws=draws,
                                  generator=torch.Generator(device=device).manual_seed(0))
    gap, pmf = _binomial_gap(n, c)
    mean = (gap * pmf).sum()
    standard_error = ((gap - mean).square() * pmf).sum().sqrt() / draws**0.5
    torch.testing.assert_close(result.ece.cpu(), torch.tensor(0.1, dtype=torch.float64))
    assert abs(result.expected_if_calibrated.cpu() - mean) < 5 * standard_error
    exact_p = pmf[gap >= 0.1 - 1e-12].sum()
    assert abs(result.p_value.cpu() - exact_p) < 5 * (exact_p * (1 - exact_p) / draws) ** 0.5


@SETTINGS
@given(seed=st.integers(0, 2**16), batch=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       classes=st.integers(2, 5), num_bins=st.integers(1, 20), num_draws=st.integers(1, 50),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_calibration_test_ranges_for_any_shape(seed, batch, classes, num_bins, num_draws, dtype):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*batch, classes, generator=generator, dtype=dtype)
    targets = torch.randint(0, classes, tuple(batch), generator=generator)
    result = bnn.calibration_test(logits, targets, num_bins=num_bins, num_draws=num_draws, from_logits=True,
                                  generator=generator)
    expected_dtype = torch.promote_types(dtype, torch.float32)  # counts are summed in float32 at least
    probs = torch.softmax(logits, dim=-1).to(expected_dtype)
    torch.testing.assert_close(result.ece, bnn.expected_calibration_error(probs, targets, num_bins=num_bins))
    assert 0.0 <= result.expected_if_calibrated <= 1.0
    assert 1 / (num_draws + 1) - 1e-6 <= result.p_value <= 1.0
    assert all(value.dtype == expected_dtype and value.dim() == 0 for value in result)


def test_calibration_test_rejects_bad_arguments():
    probs, targets = torch.tensor([[0.6, 0.4]]), torch.tensor([0])
    with pytest.raises(ValueError, match="calibration_test: num_draws must be a positive integer, got 0"):
        bnn.calibration_test(probs, targets, num_draws=0)
    with pytest.raises(ValueError, match="calibration_test: num_bins must be a positive integer"):
        bnn.calibration_test(probs, targets, num_bins=0)
    with pytest.raises(TypeError, match="calibration_test: probs must be a floating-point Tensor"):
        bnn.calibration_test(torch.tensor([[1, 0]]), targets)
    for bad in ([[0.0, 0.0]], [[1.2, -0.2]], [[float("nan"), 1.0]]):
        with pytest.raises(ValueError, match="calibration_test: probs must be finite and non-negative"):
            bnn.calibration_test(torch.tensor(bad), targets)
