"""Out-of-distribution detection metrics from uncertainty scores: AUROC, AUPR and FPR at a fixed TPR.

Every function takes the scores of in-distribution inputs and of out-of-distribution (OOD) inputs,
where a **higher score means "more likely OOD"** (entropy, mutual information, variance), and
treats OOD as the positive class, as Hendrycks & Gimpel (2017, "A Baseline for Detecting
Misclassified and Out-of-Distribution Examples") report them. Tied scores are handled exactly: a
threshold either accepts all inputs with a given score or none.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["aupr", "auroc", "fpr_at_tpr"]


def auroc(in_scores: Tensor, out_scores: Tensor) -> Tensor:
    """Return the area under the ROC curve for telling OOD inputs from in-distribution ones by score.

    Equal to the probability that a random OOD input scores higher than a random in-distribution
    one, ties counting one half (the Mann-Whitney U statistic divided by the number of pairs).

    Args:
        in_scores (Tensor): Scores of in-distribution inputs, any shape (flattened).
        out_scores (Tensor): Scores of OOD inputs, any shape (flattened).

    Returns:
        Tensor: A float64 scalar in ``[0, 1]``; 0.5 for scores that carry no information.

    Raises:
        TypeError: If a score tensor is not a real floating-point or integer tensor.
        ValueError: If a score tensor is empty or holds NaN.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.auroc(torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8]))
        tensor(0.7500, dtype=torch.float64)
    """
    inside, outside = _check(in_scores, out_scores, "auroc")
    scores = torch.cat([inside, outside])
    ranks = _average_ranks(scores)
    n_in, n_out = len(inside), len(outside)
    rank_sum = ranks[n_in:].sum()
    return (rank_sum - n_out * (n_out + 1) / 2) / (n_in * n_out)


def aupr(in_scores: Tensor, out_scores: Tensor) -> Tensor:
    """Return the area under the precision-recall curve with OOD as the positive class (average precision).

    $\\mathrm{AP} = \\sum_k (R_k - R_{k-1}) P_k$ over the distinct score thresholds in decreasing
    order, without interpolation (the definition of scikit-learn's ``average_precision_score``).

    Args:
        in_scores (Tensor): Scores of in-distribution inputs.
        out_scores (Tensor): Scores of OOD inputs.

    Returns:
        Tensor: A float64 scalar in ``[0, 1]``; the fraction of OOD inputs for uninformative scores.

    Raises:
        TypeError: If a score tensor is not a real floating-point or integer tensor.
        ValueError: If a score tensor is empty or holds NaN.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.aupr(torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8]))
        tensor(0.8333, dtype=torch.float64)
    """
    true_positives, false_positives = _cumulative_counts(*_check(in_scores, out_scores, "aupr"))
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / true_positives[-1]
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return (recall_step * precision).sum()


def fpr_at_tpr(in_scores: Tensor, out_scores: Tensor, *, tpr: float = 0.95) -> Tensor:
    """Return the false positive rate at the first threshold that detects at least ``tpr`` of the OOD inputs.

    The fraction of in-distribution inputs flagged as OOD by the highest threshold whose true
    positive rate (fraction of OOD inputs flagged) reaches ``tpr``; "FPR at 95% TPR" by default.
    Lower is better.

    Args:
        in_scores (Tensor): Scores of in-distribution inputs.
        out_scores (Tensor): Scores of OOD inputs.
        tpr (float): Required true positive rate, in ``(0, 1]``.

    Returns:
        Tensor: A float64 scalar in ``[0, 1]``.

    Raises:
        TypeError: If a score tensor is not a real floating-point or integer tensor.
        ValueError: If a score tensor is empty or holds NaN, or ``tpr`` is outside ``(0, 1]``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.fpr_at_tpr(torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8]))
        tensor(0.5000, dtype=torch.float64)
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0.0 < tpr <= 1.0:
        raise ValueError(f"fpr_at_tpr: tpr must be a number in (0, 1], got {tpr!r}.")
    inside, outside = _check(in_scores, out_scores, "fpr_at_tpr")
    true_positives, false_positives = _cumulative_counts(inside, outside)
    reached = true_positives / len(outside) >= tpr - 1e-12
    first = int(torch.nonzero(reached)[0])
    return false_positives[first] / len(inside)


def _cumulative_counts(inside: Tensor, outside: Tensor) -> tuple[Tensor, Tensor]:
    """Return OOD and in-distribution counts at or above each distinct score, thresholds decreasing."""
    scores = torch.cat([inside, outside])
    is_out = torch.cat([torch.zeros_like(inside), torch.ones_like(outside)])
    thresholds, group = torch.unique(scores, sorted=True, return_inverse=True)
    out_per_threshold = torch.zeros_like(thresholds).index_add_(0, group, is_out)
    all_per_threshold = torch.zeros_like(thresholds).index_add_(0, group, torch.ones_like(is_out))
    true_positives = out_per_threshold.flip(0).cumsum(0)
    false_positives = (all_per_threshold - out_per_threshold).flip(0).cumsum(0)
    return true_positives, false_positives


def _average_ranks(scores: Tensor) -> Tensor:
    """Return 1-based ranks of ``scores``, tied values sharing the mean of their ranks."""
    _, group, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).to(torch.float64)
    mean_rank = last_rank - (counts.to(torch.float64) - 1) / 2
    return mean_rank[group]


def _check(in_scores: Tensor, out_scores: Tensor, where: str) -> tuple[Tensor, Tensor]:
    flat = []
    for name, scores in (("in_scores", in_scores), ("out_scores", out_scores)):
        if not isinstance(scores, Tensor) or scores.is_complex() or scores.dtype == torch.bool:
            kind = f"dtype {scores.dtype}" if isinstance(scores, Tensor) else type(scores).__name__
            raise TypeError(f"{where}: {name} must be a real-valued Tensor of scores, got {kind}.")
        if scores.numel() == 0:
            raise ValueError(f"{where}: {name} is empty; both in- and out-of-distribution scores are needed.")
        values = scores.detach().reshape(-1).to(torch.float64)
        if torch.isnan(values).any():
            raise ValueError(f"{where}: {name} contains NaN.")
        flat.append(values)
    return flat[0], flat[1]
