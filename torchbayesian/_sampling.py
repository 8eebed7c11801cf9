"""Share one weight sample per posterior within a block of code."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["reuse_samples"]

_depth = 0
_cache: dict[tuple[int, str, bool], Any] = {}


@contextmanager
def reuse_samples() -> Iterator[None]:
    """Draw each posterior's sample at most once inside the block.

    Every access to a Bayesian tensor inside the block returns the same sample, so a weight used
    twice (a recurrent cell, tied embeddings) sees one draw. `BayesianModule` enters this context
    around every forward pass; use it yourself when calling a module on which you registered
    posteriors with `register_posterior`. Blocks may be nested; samples are dropped when the
    outermost block exits.

    Quantities derived from the variational parameters that the sample and the KL divergence share
    (the standard deviation of a `GaussianPosterior`) are also computed once per block, so
    computing the loss and the KL divergence inside one block is cheaper than doing it apart.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> layer = torch.nn.Linear(3, 3)
        >>> _ = bnn.register_posterior(layer, "weight")
        >>> with bnn.reuse_samples():
        ...     assert torch.equal(layer.weight, layer.weight)
    """
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _cache.clear()


@contextmanager
def fresh_samples() -> Iterator[None]:
    """Draw new samples inside the block, even within an enclosing `reuse_samples` block.

    The block is its own sampling scope; the enclosing block's samples are restored on exit.
    """
    global _depth
    depth, saved = _depth, dict(_cache)
    _depth = 0
    _cache.clear()
    try:
        with reuse_samples():
            yield
    finally:
        _cache.clear()
        _cache.update(saved)
        _depth = depth


def active() -> bool:
    """Whether a `reuse_samples` block is open."""
    return _depth > 0


def keep(key: object, kind: str, value: object) -> None:
    """Store ``value`` for ``(key, kind)`` until the enclosing `reuse_samples` block exits (no-op outside one)."""
    if _depth:
        _cache[id(key), kind, torch.is_grad_enabled()] = value


def kept(key: object, kind: str) -> Any:
    """Return the value stored by `keep` for ``(key, kind)`` in this block and grad mode, or ``None``."""
    return _cache.get((id(key), kind, torch.is_grad_enabled())) if _depth else None


def draw(key: object, sample: Callable[[], Tensor], kind: str = "sample") -> Tensor:
    """Return ``sample()``, reusing the result for ``(key, kind)`` inside a `reuse_samples` block.

    Results computed with and without gradient tracking are kept apart.
    """
    if _depth == 0:
        return sample()
    slot = (id(key), kind, torch.is_grad_enabled())
    value = _cache.get(slot)
    if value is None:
        value = _cache[slot] = sample()
    return value
