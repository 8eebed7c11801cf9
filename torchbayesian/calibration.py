"""Calibration metrics for predictive class probabilities: ECE and its test, NLL, Brier score and reliability diagrams."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from torchbayesian._validation import positive_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_DRAWS_ELEMENTS = 2**22
"""Drawn labels `calibration_test` holds at once (draws x examples), 32 MB as int64."""

__all__ = [
    "CalibrationTest",
    "ReliabilityCurve",
    "brier_score",
    "calibration_test",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_curve",
    "reliability_diagram",
]


class ReliabilityCurve(NamedTuple):
    """Per-bin statistics of a reliability diagram (each field has shape ``[num_bins]``)."""

    confidence: Tensor
    """Mean confidence (top-class probability) in each bin; 0 for empty bins."""
    accuracy: Tensor
    """Fraction of correct top-class predictions in each bin; 0 for empty bins."""
    count: Tensor
    """Number of predictions in each bin."""
    edges: Tensor
    """The ``num_bins + 1`` bin edges from 0 to 1."""


def reliability_curve(
    probs: Tensor, targets: Tensor, *, num_bins: int = 15, from_logits: bool = False
) -> ReliabilityCurve:
    """Bin predictions by confidence into equal-width bins and return each bin's confidence and accuracy.

    The confidence of a prediction is its top-class probability; bin ``b`` holds confidences in
    ``(b / num_bins, (b + 1) / num_bins]`` (the first bin also holds 0).

    Args:
        probs (Tensor): Predictive class probabilities (or logits with ``from_logits=True``) of
            shape ``[*batch, C]``. For Monte Carlo samples ``[S, *batch, C]``, average the
            probabilities over ``S`` first.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        num_bins (int): Number of equal-width bins.
        from_logits (bool): Whether ``probs`` are logits.

    Returns:
        ReliabilityCurve: ``(confidence, accuracy, count, edges)``.

    Raises:
        TypeError: If ``probs`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes disagree or ``num_bins`` is not a positive integer.
    """
    probs = _probabilities(probs, targets, from_logits, "reliability_curve")
    positive_int("reliability_curve", "num_bins", num_bins)
    confidence, predicted = probs.reshape(-1, probs.shape[-1]).max(dim=-1)
    correct = (predicted == targets.reshape(-1)).to(probs.dtype)
    edges, bins = _bins(confidence, num_bins)
    count = torch.zeros(num_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(correct))
    confidence_sum = torch.zeros_like(count).index_add(0, bins, confidence)
    correct_sum = torch.zeros_like(count).index_add(0, bins, correct)
    denominator = count.clamp_min(1.0)
    return ReliabilityCurve(confidence_sum / denominator, correct_sum / denominator, count, edges)


def expected_calibration_error(
    probs: Tensor, targets: Tensor, *, num_bins: int = 15, from_logits: bool = False
) -> Tensor:
    """Return the expected calibration error with equal-width confidence bins.

    $\\mathrm{ECE} = \\sum_b \\frac{|B_b|}{N} \\left| \\mathrm{acc}(B_b) - \\mathrm{conf}(B_b) \\right|$
    (Naeini et al., 2015; Guo et al., 2017, "On Calibration of Modern Neural Networks"), with
    bins as in `reliability_curve`.

    Args:
        probs (Tensor): Predictive probabilities (or logits with ``from_logits=True``), shape ``[*batch, C]``.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        num_bins (int): Number of equal-width bins.
        from_logits (bool): Whether ``probs`` are logits.

    Returns:
        Tensor: A scalar in ``[0, 1]``.

    Raises:
        TypeError: If ``probs`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes disagree or ``num_bins`` is not a positive integer.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
        >>> bnn.expected_calibration_error(probs, torch.tensor([0, 1]), num_bins=10)
        tensor(0.4000)
    """
    return _ece(reliability_curve(probs, targets, num_bins=num_bins, from_logits=from_logits))


class CalibrationTest(NamedTuple):
    """Result of `calibration_test` (each field a scalar tensor, float32 for float16 or bfloat16 ``probs``)."""

    ece: Tensor
    """The expected calibration error of the predictions (`expected_calibration_error`, up to rounding)."""
    expected_if_calibrated: Tensor
    """The mean ECE of a perfectly calibrated predictor with the same probabilities on as many examples."""
    p_value: Tensor
    """The probability, for that calibrated predictor, of an ECE at least ``ece`` (Monte Carlo, ``>= 1 / (num_draws + 1)``)."""


def calibration_test(
    probs: Tensor,
    targets: Tensor,
    *,
    num_bins: int = 15,
    num_draws: int = 1000,
    from_logits: bool = False,
    generator: torch.Generator | None = None,
) -> CalibrationTest:
    """Compare the ECE with the ECE that sampling noise alone gives a calibrated predictor.

    On a finite test set, even a perfectly calibrated predictor has a positive ECE, and a larger
    one the more of its predictions fall in sparsely populated confidence bins. This function draws
    ``num_draws`` label sets from ``probs`` themselves (under which ``probs`` are calibrated by
    construction: "consistency resampling", Bröcker & Smith, 2007), computes the ECE of each with
    the same bins, and returns their mean and the Monte Carlo p-value of the observed ECE. Compare
    two models' ECE only beyond the difference of their ``expected_if_calibrated``.

    Args:
        probs (Tensor): Predictive probabilities (or logits with ``from_logits=True``), shape ``[*batch, C]``.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        num_bins (int): Number of equal-width bins, as in `expected_calibration_error`.
        num_draws (int): Label sets drawn from ``probs``.
        from_logits (bool): Whether ``probs`` are logits.
        generator (torch.Generator | None): Random number generator for the draws (on ``probs``'s device).

    Returns:
        CalibrationTest: ``(ece, expected_if_calibrated, p_value)``.

    Raises:
        TypeError: If ``probs`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes disagree, ``num_bins`` or ``num_draws`` is not a positive integer,
            or a row of ``probs`` is not a distribution (negative, not finite, or summing to 0).

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> probs = torch.tensor([[0.9, 0.1]]).repeat(200, 1)  # 90% confident, right half of the time
        >>> result = bnn.calibration_test(probs, torch.arange(200) % 2, generator=torch.Generator().manual_seed(0))
        >>> result.ece, bool(result.expected_if_calibrated < 0.05), bool(result.p_value < 0.01)
        (tensor(0.4000), True, True)
    """
    probs = _probabilities(probs, targets, from_logits, "calibration_test")
    positive_int("calibration_test", "num_bins", num_bins)
    positive_int("calibration_test", "num_draws", num_draws)
    # float32 at least: counts of a few thousand are not exact in float16 or bfloat16.
    flat = probs.detach().reshape(-1, probs.shape[-1]).to(torch.promote_types(probs.dtype, torch.float32))
    if not (torch.isfinite(flat).all() and (flat >= 0).all() and (flat.sum(dim=-1) > 0).all()):
        raise ValueError("calibration_test: probs must be finite and non-negative with a positive sum in every row "
                         "(pass logits with from_logits=True).")
    confidence, predicted = flat.max(dim=-1)
    _, bins = _bins(confidence, num_bins)
    confidence_sum = torch.zeros(num_bins, 1, dtype=flat.dtype, device=flat.device).index_add_(0, bins, confidence[:, None])

    def ece_of(labels: Tensor) -> Tensor:  # labels [N, k] -> ECE of each column, [k]
        correct = (labels == predicted[:, None]).to(flat.dtype)
        correct_sum = torch.zeros(num_bins, labels.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, bins, correct)
        return (correct_sum - confidence_sum).abs().sum(dim=0) / len(flat)

    # The same arithmetic for the observed and the drawn labels, so that equal ECEs compare equal.
    ece = ece_of(targets.reshape(-1, 1))[0]
    chunk = max(1, _DRAWS_ELEMENTS // max(1, len(flat)))
    null_ece = torch.cat([ece_of(torch.multinomial(flat, min(chunk, num_draws - start), replacement=True, generator=generator))
                          for start in range(0, num_draws, chunk)])
    # ECEs equal but for rounding (|k - c| and |k' - c| with c = (k + k') / 2 rounded) count as equal.
    tolerance = ece * torch.finfo(flat.dtype).eps ** 0.5
    p_value = (1 + (null_ece >= ece - tolerance).sum()) / (num_draws + 1)
    return CalibrationTest(ece, null_ece.mean(), p_value.to(flat.dtype))


def negative_log_likelihood(probs: Tensor, targets: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the mean negative log-likelihood (log loss) of the targets under the predictive probabilities.

    Args:
        probs (Tensor): Predictive probabilities (or logits with ``from_logits=True``), shape ``[*batch, C]``.
            For Monte Carlo samples, average the **probabilities** (not the logits) over draws first.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        from_logits (bool): Whether ``probs`` are logits (then ``log_softmax`` is used).

    Returns:
        Tensor: A non-negative scalar, in nats.

    Raises:
        TypeError: If ``probs`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes disagree.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.negative_log_likelihood(torch.tensor([[0.5, 0.5]]), torch.tensor([1]))
        tensor(0.6931)
    """
    _check(probs, targets, "negative_log_likelihood")
    log_probs = torch.log_softmax(probs, dim=-1) if from_logits else probs.log()
    return -log_probs.gather(-1, targets.long().unsqueeze(-1)).mean()


def brier_score(probs: Tensor, targets: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the multi-class Brier score $\\frac{1}{N}\\sum_i \\sum_c (p_{ic} - \\mathbb{1}[y_i = c])^2$ (Brier, 1950).

    Args:
        probs (Tensor): Predictive probabilities (or logits with ``from_logits=True``), shape ``[*batch, C]``.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        from_logits (bool): Whether ``probs`` are logits.

    Returns:
        Tensor: A scalar in ``[0, 2]``; 0 for confident correct predictions.

    Raises:
        TypeError: If ``probs`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes disagree.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.brier_score(torch.tensor([[0.5, 0.5]]), torch.tensor([1]))
        tensor(0.5000)
    """
    probs = _probabilities(probs, targets, from_logits, "brier_score")
    one_hot = torch.nn.functional.one_hot(targets.long(), probs.shape[-1]).to(probs.dtype)
    return (probs - one_hot).square().sum(dim=-1).mean()


def reliability_diagram(
    probs: Tensor,
    targets: Tensor,
    *,
    num_bins: int = 15,
    from_logits: bool = False,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """Draw a reliability diagram (accuracy against confidence per bin) with matplotlib.

    matplotlib is imported only when this function is called (``pip install matplotlib``). Bars
    show each bin's accuracy; the diagonal is perfect calibration; the title reports the ECE.

    Args:
        probs (Tensor): Predictive probabilities (or logits with ``from_logits=True``), shape ``[*batch, C]``.
        targets (Tensor): Integer class labels of shape ``[*batch]``.
        num_bins (int): Number of equal-width bins.
        from_logits (bool): Whether ``probs`` are logits.
        ax (matplotlib.axes.Axes | None): Axes to draw on; a new figure by default.
        label (str | None): Legend label of the bars.

    Returns:
        matplotlib.axes.Axes: The axes drawn on.

    Raises:
        ImportError: If matplotlib is not installed.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("reliability_diagram needs matplotlib: pip install matplotlib") from error
    curve = reliability_curve(probs, targets, num_bins=num_bins, from_logits=from_logits)
    ece = _ece(curve)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    edges = curve.edges.detach().cpu().numpy()
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], curve.accuracy.detach().cpu().numpy(), width=width, align="edge", alpha=0.6,
           edgecolor="black", label=label or "accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE = {ece.item():.3f}")
    ax.legend(loc="upper left")
    return ax


def _ece(curve: ReliabilityCurve) -> Tensor:
    """The count-weighted mean gap between accuracy and confidence over the bins of ``curve``."""
    return torch.sum(curve.count * (curve.accuracy - curve.confidence).abs()) / curve.count.sum()


def _bins(confidence: Tensor, num_bins: int) -> tuple[Tensor, Tensor]:
    """The ``num_bins + 1`` equal-width edges and each confidence's bin: ``(b / num_bins, (b + 1) / num_bins]``."""
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype, device=confidence.device)
    return edges, torch.bucketize(confidence.detach(), edges[1:-1])


def _check(probs: Tensor, targets: Tensor, where: str) -> None:
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError(f"{where}: probs must be a floating-point Tensor, got {type(probs).__name__}.")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"{where}: targets must be an integer Tensor of class labels, got {_dtype(targets)}.")
    if probs.dim() < 1 or probs.shape[:-1] != targets.shape:
        raise ValueError(
            f"{where}: probs must have shape [*batch, C] and targets [*batch].\n"
            f"probs shape: {tuple(probs.shape)}\ntargets shape: {tuple(targets.shape)}"
        )


def _probabilities(probs: Tensor, targets: Tensor, from_logits: bool, where: str) -> Tensor:
    _check(probs, targets, where)
    return torch.softmax(probs, dim=-1) if from_logits else probs


def _dtype(value: object) -> str:
    return f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
