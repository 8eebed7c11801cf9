"""Predictive uncertainty from Monte Carlo samples: entropy, its aleatoric/epistemic split, variation ratio."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "AleatoricUncertainty",
    "Entropy",
    "EpistemicUncertainty",
    "GaussianUncertainty",
    "VariationRatio",
    "aleatoric_uncertainty",
    "entropy",
    "epistemic_uncertainty",
    "gaussian_uncertainty",
    "variation_ratio",
]


def entropy(samples: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the total predictive entropy $\\mathbb{H}[\\bar p]$ of the Monte Carlo mean $\\bar p = \\frac{1}{S}\\sum_s p_s$.

    Args:
        samples (Tensor): Class probabilities, or logits with ``from_logits=True``, of shape
            ``[S, *batch, C]`` (``S`` Monte Carlo draws, e.g. from `torchbayesian.bnn.predict`).
        from_logits (bool): Whether ``samples`` are unnormalised logits; they are then handled in
            log space (``log_softmax``/``logsumexp``), which is exact for extreme logits.

    Returns:
        Tensor: Entropy in nats, shape ``[*batch]``; between 0 and ``log C``.

    Raises:
        TypeError: If ``samples`` is not a floating-point tensor.
        ValueError: If ``samples`` has fewer than two dimensions.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.entropy(torch.zeros(4, 1, 3), from_logits=True)  # uniform: log 3
        tensor([1.0986])
    """
    log_mean = _log_mean_probabilities(samples, from_logits, "entropy")
    return _entropy_from_log(log_mean)


def aleatoric_uncertainty(samples: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the expected entropy $\\frac{1}{S}\\sum_s \\mathbb{H}[p_s]$ (the aleatoric part of `entropy`).

    Args:
        samples (Tensor): Probabilities, or logits with ``from_logits=True``, of shape ``[S, *batch, C]``.
        from_logits (bool): Whether ``samples`` are logits.

    Returns:
        Tensor: Expected entropy in nats, shape ``[*batch]``.

    Raises:
        TypeError: If ``samples`` is not a floating-point tensor.
        ValueError: If ``samples`` has fewer than two dimensions.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> one_hot = torch.eye(3)[:, None, :]  # three confident draws that disagree
        >>> bnn.aleatoric_uncertainty(one_hot)
        tensor([0.])
    """
    log_probs = _log_probabilities(samples, from_logits, "aleatoric_uncertainty")
    return _entropy_from_log(log_probs).mean(dim=0)


def epistemic_uncertainty(samples: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the mutual information between prediction and weights: `entropy` minus `aleatoric_uncertainty`.

    $\\mathbb{I}[y; w] = \\mathbb{H}[\\bar p] - \\frac{1}{S}\\sum_s \\mathbb{H}[p_s] \\ge 0$ (Houlsby et al.,
    2011, "Bayesian Active Learning for Classification and Preference Learning"). It is zero when
    all draws agree and grows as they disagree; rounding errors below zero are clamped.

    Args:
        samples (Tensor): Probabilities, or logits with ``from_logits=True``, of shape ``[S, *batch, C]``.
        from_logits (bool): Whether ``samples`` are logits.

    Returns:
        Tensor: Mutual information in nats, shape ``[*batch]``; between 0 and ``log C``.

    Raises:
        TypeError: If ``samples`` is not a floating-point tensor.
        ValueError: If ``samples`` has fewer than two dimensions.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> one_hot = torch.eye(2)[:, None, :]  # two confident draws that disagree
        >>> bnn.epistemic_uncertainty(one_hot)
        tensor([0.6931])
    """
    log_probs = _log_probabilities(samples, from_logits, "epistemic_uncertainty")
    log_mean = torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    total = _entropy_from_log(log_mean)
    expected = _entropy_from_log(log_probs).mean(dim=0)
    return (total - expected).clamp_min(0.0)


def variation_ratio(samples: Tensor, *, from_logits: bool = False) -> Tensor:
    """Return the fraction of draws whose predicted class differs from the most frequent one.

    ``1 - count(mode) / S`` (Freeman, 1965): 0 when every draw predicts the same class, at most
    ``1 - 1/C``. Logits and probabilities give the same result; ``from_logits`` is accepted for a
    uniform interface.

    Args:
        samples (Tensor): Probabilities or logits of shape ``[S, *batch, C]``.
        from_logits (bool): Whether ``samples`` are logits (the ``argmax`` is the same either way).

    Returns:
        Tensor: Variation ratio, shape ``[*batch]``, in the dtype of ``samples``.

    Raises:
        TypeError: If ``samples`` is not a floating-point tensor.
        ValueError: If ``samples`` has fewer than two dimensions.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> draws = torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])
        >>> bnn.variation_ratio(draws)
        tensor([0.2500])
    """
    _check_samples(samples, "variation_ratio")
    num_classes = samples.shape[-1]
    votes = torch.nn.functional.one_hot(samples.argmax(dim=-1), num_classes).sum(dim=0)
    return 1.0 - votes.max(dim=-1).values.to(samples.dtype) / samples.shape[0]


class GaussianUncertainty(NamedTuple):
    """Variance decomposition of a Gaussian predictive mixture (each field has shape ``[*batch]``)."""

    total: Tensor
    """Total predictive variance ``aleatoric + epistemic``."""
    aleatoric: Tensor
    """Mean of the predicted variances (noise in the data)."""
    epistemic: Tensor
    """Variance of the predicted means across draws (uncertainty in the weights)."""


def gaussian_uncertainty(means: Tensor, variances: Tensor, *, log_variance: bool = False) -> GaussianUncertainty:
    """Split the predictive variance of Monte Carlo Gaussian predictions into aleatoric and epistemic parts.

    For draws $s = 1..S$ predicting $\\mathcal{N}(\\mu_s, \\sigma_s^2)$, the mixture variance is
    $\\frac{1}{S}\\sum_s \\sigma_s^2 + \\frac{1}{S}\\sum_s (\\mu_s - \\bar\\mu)^2$ (law of total
    variance): aleatoric plus epistemic (Kendall & Gal, 2017).

    Args:
        means (Tensor): Predicted means of shape ``[S, *batch]``.
        variances (Tensor): Predicted variances (or log-variances with ``log_variance=True``), same shape.
        log_variance (bool): Whether ``variances`` holds log-variances.

    Returns:
        GaussianUncertainty: ``(total, aleatoric, epistemic)``, each of shape ``[*batch]``.

    Raises:
        TypeError: If an input is not a floating-point tensor.
        ValueError: If the shapes differ or there is no sample dimension.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> u = bnn.gaussian_uncertainty(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]]))
        >>> u.aleatoric, u.epistemic, u.total
        (tensor([2.]), tensor([1.]), tensor([3.]))
    """
    for name, tensor in (("means", means), ("variances", variances)):
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise TypeError(f"gaussian_uncertainty: {name} must be a floating-point Tensor, got {_describe(tensor)}.")
    if means.shape != variances.shape or means.dim() < 1:
        raise ValueError(
            "gaussian_uncertainty: means and variances must have the same shape [S, *batch].\n"
            f"means shape: {tuple(means.shape)}\nvariances shape: {tuple(variances.shape)}"
        )
    aleatoric = (variances.exp() if log_variance else variances).mean(dim=0)
    epistemic = means.var(dim=0, correction=0)
    return GaussianUncertainty(aleatoric + epistemic, aleatoric, epistemic)


class _SampleMeasure(nn.Module):
    _measure: ClassVar[Callable[..., Tensor]]

    def __init__(self, *, from_logits: bool = False) -> None:
        super().__init__()
        self.from_logits = from_logits

    def forward(self, samples: Tensor) -> Tensor:
        """Return the measure of ``samples`` (shape ``[S, *batch, C]``), one value per batch element."""
        return type(self)._measure(samples, from_logits=self.from_logits)

    def extra_repr(self) -> str:
        return f"from_logits={self.from_logits}"


class Entropy(_SampleMeasure):
    """Compute the total predictive entropy of Monte Carlo samples; module form of `entropy`.

    Args:
        from_logits (bool): Whether inputs are logits rather than probabilities.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.Entropy(from_logits=True)(torch.randn(8, 5, 10)).shape
        torch.Size([5])
    """

    _measure = staticmethod(entropy)


class AleatoricUncertainty(_SampleMeasure):
    """Compute the expected entropy of Monte Carlo samples; module form of `aleatoric_uncertainty`.

    Args:
        from_logits (bool): Whether inputs are logits rather than probabilities.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.AleatoricUncertainty(from_logits=True)(torch.randn(8, 5, 10)).shape
        torch.Size([5])
    """

    _measure = staticmethod(aleatoric_uncertainty)


class EpistemicUncertainty(_SampleMeasure):
    """Compute the mutual information of Monte Carlo samples; module form of `epistemic_uncertainty`.

    Args:
        from_logits (bool): Whether inputs are logits rather than probabilities.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.EpistemicUncertainty(from_logits=True)(torch.randn(8, 5, 10)).shape
        torch.Size([5])
    """

    _measure = staticmethod(epistemic_uncertainty)


class VariationRatio(_SampleMeasure):
    """Compute the variation ratio of Monte Carlo samples; module form of `variation_ratio`.

    Args:
        from_logits (bool): Whether inputs are logits rather than probabilities.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.VariationRatio()(torch.randn(8, 5, 10).softmax(-1)).shape
        torch.Size([5])
    """

    _measure = staticmethod(variation_ratio)


def _check_samples(samples: Tensor, where: str) -> None:
    if not isinstance(samples, Tensor) or not samples.is_floating_point():
        raise TypeError(f"{where}: samples must be a floating-point Tensor, got {_describe(samples)}.")
    if samples.dim() < 2:
        raise ValueError(
            f"{where}: samples must have shape [S, *batch, C] (at least 2 dimensions), "
            f"got shape {tuple(samples.shape)}."
        )


def _log_probabilities(samples: Tensor, from_logits: bool, where: str) -> Tensor:
    _check_samples(samples, where)
    if from_logits:
        return torch.log_softmax(samples, dim=-1)
    return samples.log()


def _log_mean_probabilities(samples: Tensor, from_logits: bool, where: str) -> Tensor:
    if from_logits:
        log_probs = _log_probabilities(samples, from_logits, where)
        return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
    _check_samples(samples, where)
    return samples.mean(dim=0).log()


def _entropy_from_log(log_probs: Tensor) -> Tensor:
    # 0 * log 0 = 0, with finite gradients where a probability is exactly zero.
    probs = log_probs.exp()
    safe_log = torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))
    return -torch.sum(probs * safe_log, dim=-1)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of dtype {value.dtype}"
    return type(value).__name__
