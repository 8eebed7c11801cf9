"""Opt-in checks that name the posterior behind a NaN or an infinity."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from torchbayesian.module import BayesianModule
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.registration import posteriors

__all__ = ["detect_anomalies"]


@contextmanager
def detect_anomalies(model: nn.Module) -> Iterator[nn.Module]:
    """Raise as soon as a posterior of ``model`` produces a NaN or an infinity, naming that posterior.

    Inside the block three things are checked, each against the posterior's qualified name
    (relative to the wrapped model for a `BayesianModule`, as in `BayesianModule.posteriors`):

    - every sample (or frozen mean) a posterior returns in a forward pass;
    - every posterior's term of `kl_divergence` (through `VariationalPosterior.register_kl_hook`);
    - every gradient that reaches a variational parameter (``mu``, ``rho``, ...) in backward.

    The error lists the variational parameters that are themselves non-finite, which tells a
    diverged parameter from an overflow in the computation. The checks cost one reduction per
    tensor, so enable them while debugging, not for every run. Blocks may be nested.

    Args:
        model (nn.Module): A `BayesianModule` or any module holding posteriors.

    Yields:
        nn.Module: ``model``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        FloatingPointError: Inside the block, at the first non-finite sample, KL term or gradient.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(3, 1))
        >>> with torch.no_grad():
        ...     model.module.parametrizations.weight[0].mu[0, 0] = float("nan")
        >>> with bnn.detect_anomalies(model):  # doctest: +ELLIPSIS
        ...     model(torch.ones(1, 3))
        Traceback (most recent call last):
        ...
        FloatingPointError: detect_anomalies: the sample of posterior 'weight' contains NaN or Inf; ... mu.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"detect_anomalies expects an nn.Module, got {type(model).__name__}.")
    named = model.posteriors() if isinstance(model, BayesianModule) else posteriors(model)
    handles: list[RemovableHandle] = []
    try:
        for name, posterior in named:
            handles.append(posterior.register_forward_hook(_sample_hook(name)))
            handles.append(posterior.register_kl_hook(_kl_hook(name)))
            for parameter_name, parameter in posterior.named_parameters(recurse=False):
                if parameter.requires_grad:
                    handles.append(parameter.register_hook(_gradient_hook(name, parameter_name)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _kl_hook(name: str) -> Any:
    def hook(posterior: VariationalPosterior, term: Tensor) -> None:
        if not _finite(term):
            raise FloatingPointError(
                f"detect_anomalies: the KL divergence of posterior {name!r} is {term.item()}"
                f"{_diagnosis(posterior)}."
            )

    return hook


def _sample_hook(name: str) -> Any:
    def hook(posterior: VariationalPosterior, args: tuple[Any, ...], output: Tensor) -> None:
        if not _finite(output):
            what = "mean" if posterior.frozen else "sample"
            raise FloatingPointError(
                f"detect_anomalies: the {what} of posterior {name!r} contains NaN or Inf{_diagnosis(posterior)}."
            )

    return hook


def _gradient_hook(name: str, parameter_name: str) -> Any:
    def hook(gradient: Tensor) -> None:
        if not _finite(gradient):
            raise FloatingPointError(
                f"detect_anomalies: the gradient of {parameter_name!r} in posterior {name!r} contains NaN or Inf."
            )

    return hook


def _diagnosis(posterior: VariationalPosterior) -> str:
    tensors = [*posterior.named_parameters(), *posterior.named_buffers()]
    broken = [name for name, tensor in tensors if not _finite(tensor)]
    return f"; non-finite parameters: {', '.join(broken)}" if broken else "; all its parameters are finite"


def _finite(tensor: Tensor) -> bool:
    with torch.no_grad():
        return tensor.device.type == "meta" or bool(torch.isfinite(tensor).all())
