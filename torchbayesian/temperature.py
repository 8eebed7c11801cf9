"""Post-hoc temperature scaling: one scalar that rescales logits to minimise held-out negative log-likelihood."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["fit_temperature"]


def fit_temperature(logits: Tensor, targets: Tensor, *, max_iter: int = 100) -> Tensor:
    """Return the temperature $T > 0$ that minimises the NLL of ``softmax(logits / T)`` on held-out data.

    Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") fits one
    scalar on a validation set, never on the test set, and divides the logits by it at prediction
    time: accuracy is unchanged and $T > 1$ softens over-confident predictions. For Monte Carlo
    logits of shape ``[S, *batch, C]`` the predictive is the mean over draws of
    ``softmax(logits_s / T)``, the same $T$ for every draw. Fitted in float64 by L-BFGS on $\\log T$.

    Args:
        logits (Tensor): Validation logits ``[*batch, C]``, or Monte Carlo logits ``[S, *batch, C]``.
        targets (Tensor): Integer class labels ``[*batch]``.
        max_iter (int): L-BFGS iterations.

    Returns:
        Tensor: The temperature, a positive float64 scalar; divide logits by it.

    Raises:
        TypeError: If ``logits`` is not floating point or ``targets`` not integer.
        ValueError: If the shapes do not match ``[*batch, C]`` / ``[S, *batch, C]`` and ``[*batch]``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> logits = 10 * torch.tensor([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
        >>> temperature = bnn.fit_temperature(logits, torch.tensor([0, 0, 1, 1]))
        >>> bool(temperature > 1)  # one confident mistake: soften
        True
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"fit_temperature: logits must be a floating-point Tensor, got {_kind(logits)}.")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"fit_temperature: targets must be an integer Tensor of class labels, got {_kind(targets)}.")
    if logits.shape[:-1] == targets.shape:
        draws = logits.unsqueeze(0)
    elif logits.dim() == targets.dim() + 2 and logits.shape[1:-1] == targets.shape:
        draws = logits
    else:
        raise ValueError(
            "fit_temperature: logits must have shape [*batch, C] or [S, *batch, C] for targets of shape [*batch].\n"
            f"logits shape: {tuple(logits.shape)}\ntargets shape: {tuple(targets.shape)}"
        )
    draws = draws.detach().to(torch.float64).reshape(draws.shape[0], -1, draws.shape[-1])
    labels = targets.reshape(-1).long().to(draws.device)
    log_temperature = torch.zeros((), dtype=torch.float64, device=draws.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        log_probs = torch.log_softmax(draws / log_temperature.exp(), dim=-1)
        log_predictive = torch.logsumexp(log_probs, dim=0) - math.log(draws.shape[0])
        loss = -log_predictive.gather(-1, labels.unsqueeze(-1)).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_temperature.detach().exp()


def _kind(value: object) -> str:
    return f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
