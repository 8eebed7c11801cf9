"""The negative evidence lower bound (ELBO) loss and the weights that scale its KL term correctly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchbayesian._validation import non_negative_int, positive_int
from torchbayesian.kl import kl_divergence

__all__ = [
    "ELBOLoss",
    "GaussianNLLLoss",
    "cyclical_kl_annealing",
    "elbo_loss",
    "kl_weight",
    "linear_kl_warmup",
    "minibatch_kl_weight",
]


def kl_weight(
    dataset_size: int, *, batch_size: int | None = None, reduction: Literal["mean", "sum"] = "mean"
) -> float:
    """Return the weight of the KL term for a data term averaged (or summed) over a mini-batch.

    The negative ELBO over a training set of $N$ examples is

    $$
    \\sum_{i=1}^{N} \\mathbb{E}_q[-\\log p(y_i \\mid x_i, w)] + \\mathrm{KL}(q \\,\\|\\, p).
    $$

    Dividing by $N$ does not move its minimum, and a mini-batch $B$ estimates the first term
    without bias:

    $$
    \\frac{1}{|B|}\\sum_{i \\in B} \\mathbb{E}_q[-\\log p(y_i \\mid x_i, w)] + \\frac{1}{N}\\mathrm{KL}(q \\,\\|\\, p).
    $$

    So a **mean**-reduced data term (PyTorch's default) takes weight $1/N$, and a **sum**-reduced
    one takes $|B|/N$. Using $1/|B|$ or $1$ instead over-regularises by a factor of $N/|B|$ or $N$.

    Args:
        dataset_size (int): Number of training examples $N$ (e.g. ``len(train_set)``).
        batch_size (int | None): Mini-batch size, needed only for ``reduction="sum"``.
        reduction (str): How the data term is reduced over the batch: ``"mean"`` or ``"sum"``.

    Returns:
        float: The factor to multiply the summed KL divergence by.

    Raises:
        ValueError: If a size is not a positive integer or ``reduction`` is unknown.

    Example:
        >>> from torchbayesian import bnn
        >>> bnn.kl_weight(50_000)
        2e-05
        >>> bnn.kl_weight(50_000, batch_size=100, reduction="sum")
        0.002
    """
    positive_int("kl_weight", "dataset_size", dataset_size)
    if reduction == "mean":
        return 1.0 / dataset_size
    if reduction == "sum":
        if batch_size is None:
            raise ValueError("kl_weight: reduction='sum' needs batch_size, the number of examples summed over.")
        positive_int("kl_weight", "batch_size", batch_size)
        return batch_size / dataset_size
    raise ValueError(f"kl_weight: reduction must be 'mean' or 'sum', got {reduction!r}.")


def minibatch_kl_weight(batch_index: int, num_batches: int) -> float:
    """Return Blundell et al.'s mini-batch KL weight $\\pi_i = 2^{M-i} / (2^M - 1)$ for batch $i$ of $M$.

    The weights sum to 1 over an epoch, so the full KL is still counted once per epoch, but the
    first batches carry most of it and the last ones almost none (Blundell et al., 2015, eq. 9).
    Use it in place of $1/M$ for a **sum**-reduced data term, or multiply it by $M/N$ for a
    mean-reduced one. Computed as $2^{-i} / (1 - 2^{-M})$, which cannot overflow.

    Args:
        batch_index (int): 1-based index $i$ of the batch within the epoch.
        num_batches (int): Number of batches $M$ per epoch.

    Returns:
        float: $\\pi_i$, in ``(0, 1]``.

    Raises:
        ValueError: If ``num_batches < 1`` or ``batch_index`` is not in ``1..num_batches``.

    Example:
        >>> from torchbayesian import bnn
        >>> [bnn.minibatch_kl_weight(i, 3) for i in (1, 2, 3)]
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    positive_int("minibatch_kl_weight", "num_batches", num_batches)
    positive_int("minibatch_kl_weight", "batch_index", batch_index)
    if batch_index > num_batches:
        raise ValueError(
            f"minibatch_kl_weight: batch_index is 1-based and at most num_batches={num_batches}, got {batch_index}."
        )
    return math.ldexp(1.0, -batch_index) / -math.expm1(-num_batches * math.log(2.0))


def linear_kl_warmup(step: int, warmup_steps: int, *, start: float = 0.0) -> float:
    """Return a KL annealing factor that rises linearly from ``start`` to 1 over ``warmup_steps``, then stays at 1.

    Multiply the KL weight by it early in training so the data term shapes the means before the
    KL pulls the variances up (Sønderby et al., 2016, "Ladder Variational Autoencoders").

    Args:
        step (int): Current optimisation step, from 0.
        warmup_steps (int): Steps until the factor reaches 1; 0 disables the warm-up.
        start (float): Factor at step 0, in ``[0, 1]``.

    Returns:
        float: A factor in ``[start, 1]``.

    Raises:
        ValueError: If ``step`` or ``warmup_steps`` is negative or ``start`` is outside ``[0, 1]``.

    Example:
        >>> from torchbayesian import bnn
        >>> [bnn.linear_kl_warmup(step, 4) for step in (0, 2, 4, 10)]
        [0.0, 0.5, 1.0, 1.0]
    """
    non_negative_int("linear_kl_warmup", "step", step)
    non_negative_int("linear_kl_warmup", "warmup_steps", warmup_steps)
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"linear_kl_warmup: start must be in [0, 1], got {start!r}.")
    if warmup_steps == 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


def cyclical_kl_annealing(step: int, cycle_length: int, *, ramp_fraction: float = 0.5) -> float:
    """Return a cyclical KL annealing factor: within each cycle, rise linearly from 0 to 1, then hold at 1.

    Fu et al., 2019, "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL Vanishing".

    Args:
        step (int): Current optimisation step, from 0.
        cycle_length (int): Steps per cycle.
        ramp_fraction (float): Fraction of each cycle spent rising, in ``(0, 1]``.

    Returns:
        float: A factor in ``[0, 1]``.

    Raises:
        ValueError: If ``step`` is negative, ``cycle_length`` not positive or ``ramp_fraction`` outside ``(0, 1]``.

    Example:
        >>> from torchbayesian import bnn
        >>> [bnn.cyclical_kl_annealing(step, 4) for step in range(6)]
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    """
    non_negative_int("cyclical_kl_annealing", "step", step)
    positive_int("cyclical_kl_annealing", "cycle_length", cycle_length)
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"cyclical_kl_annealing: ramp_fraction must be in (0, 1], got {ramp_fraction!r}.")
    position = (step % cycle_length) / cycle_length
    return min(1.0, position / ramp_fraction)


def elbo_loss(data_loss: Tensor, kl: Tensor, kl_weight: float | Tensor) -> Tensor:
    """Return the negative ELBO ``data_loss + kl_weight * kl``.

    Args:
        data_loss (Tensor): Negative log-likelihood of the mini-batch (mean- or sum-reduced).
        kl (Tensor): Summed KL divergence, e.g. `torchbayesian.bnn.kl_divergence` of the model.
        kl_weight (float | Tensor): Weight of the KL term; see `kl_weight` for the correct value.

    Returns:
        Tensor: A scalar to minimise.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.elbo_loss(torch.tensor(0.5), torch.tensor(100.0), bnn.kl_weight(1000))
        tensor(0.6000)
    """
    return data_loss + kl_weight * kl


class ELBOLoss(nn.Module):
    """Compute the negative ELBO: a data loss (``criterion``) plus ``kl_weight`` times the model's KL divergence.

    ``criterion`` is any loss returning a scalar negative log-likelihood: `torch.nn.CrossEntropyLoss`
    for classification, `GaussianNLLLoss` for regression. The KL weight must match its reduction:
    ``kl_weight(len(train_set))`` for a mean (the default of PyTorch losses), see `kl_weight` for
    the derivation. Change `kl_weight` between steps for warm-up or mini-batch weighting.

    Args:
        criterion (Callable[..., Tensor]): The data loss; called as ``criterion(*args)``.
        kl_weight (float): Weight of the summed KL divergence.
        num_samples (int | None): Fresh samples for Monte Carlo KL estimates (posteriors without a
            closed-form KL); by default the weights of the latest forward pass are used.

    Attributes:
        last_data_loss (Tensor | None): Data term of the latest call, detached, for logging.
        last_kl (Tensor | None): Summed KL of the latest call, detached, for logging.

    Raises:
        TypeError: If ``criterion`` is not callable.
        ValueError: If ``kl_weight`` is negative or not finite.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(4, 3))
        >>> elbo = bnn.ELBOLoss(torch.nn.CrossEntropyLoss(), kl_weight=bnn.kl_weight(1000))
        >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        >>> loss = elbo(model(x), y, kl=model)
        >>> loss.backward()
    """

    def __init__(
        self,
        criterion: Callable[..., Tensor],
        *,
        kl_weight: float,
        num_samples: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(criterion):
            raise TypeError(f"ELBOLoss: criterion must be a callable loss, got {type(criterion).__name__}.")
        self.criterion = criterion
        self.kl_weight = kl_weight
        self.num_samples = num_samples
        self.last_data_loss: Tensor | None = None
        self.last_kl: Tensor | None = None

    @property
    def kl_weight(self) -> float:
        """Weight of the summed KL divergence; assign a new value to anneal it."""
        return self._kl_weight

    @kl_weight.setter
    def kl_weight(self, value: float) -> None:
        weight = float(value)
        if not (math.isfinite(weight) and weight >= 0.0):
            raise ValueError(f"ELBOLoss: kl_weight must be a finite non-negative number, got {value!r}.")
        self._kl_weight = weight

    def forward(self, *args: Any, kl: nn.Module | Tensor) -> Tensor:
        """Return ``criterion(*args) + kl_weight * KL``.

        Args:
            *args: Arguments of ``criterion`` (e.g. ``logits, targets`` or ``mean, targets, var``).
            kl (nn.Module | Tensor): The model (its summed KL is computed) or a precomputed KL.

        Returns:
            Tensor: The negative ELBO, a scalar.
        """
        data_loss = self.criterion(*args)
        if isinstance(kl, nn.Module):
            kl = kl_divergence(kl, num_samples=self.num_samples)
        elif not isinstance(kl, Tensor):
            raise TypeError(f"ELBOLoss: kl must be a model or a Tensor, got {type(kl).__name__}.")
        self.last_data_loss = data_loss.detach()
        self.last_kl = kl.detach()
        return elbo_loss(data_loss, kl, self.kl_weight)

    def extra_repr(self) -> str:
        return f"kl_weight={self.kl_weight:g}"


class GaussianNLLLoss(nn.GaussianNLLLoss):
    """Gaussian negative log-likelihood that also accepts a **log**-variance; a drop-in `torch.nn.GaussianNLLLoss`.

    With ``log_variance=True`` the third argument is ``log sigma^2`` (an unconstrained network
    output), exponentiated before the loss. Use it as the criterion of `ELBOLoss` for regression:
    ``ELBOLoss(GaussianNLLLoss(log_variance=True), kl_weight=kl_weight(N))``.

    Args:
        log_variance (bool): Whether ``var`` in `forward` is a log-variance.
        full (bool): Include the constant ``0.5 * log(2 pi)``.
        eps (float): Lower clamp of the variance, for stability.
        reduction (str): ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> loss = bnn.GaussianNLLLoss(log_variance=True, full=True)
        >>> loss(torch.zeros(3), torch.zeros(3), torch.zeros(3))  # N(0, 1) density at 0
        tensor(0.9189)
    """

    def __init__(
        self,
        *,
        log_variance: bool = False,
        full: bool = False,
        eps: float = 1e-6,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        super().__init__(full=full, eps=eps, reduction=reduction)
        self.log_variance = log_variance

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        """Return the loss of ``target`` under ``N(input, var)`` (``var`` a log-variance if `log_variance`)."""
        if self.log_variance:
            var = var.exp() if isinstance(var, Tensor) else torch.tensor(var).exp().item()
        return super().forward(input, target, var)

    def extra_repr(self) -> str:
        return f"log_variance={self.log_variance}, full={self.full}, reduction={self.reduction!r}"
