"""Share one weight sample per posterior within a block of code."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor

__all__ = ["reuse_samples"]

_depth = 0
_samples: dict[int, Tensor] = {}


@contextmanager
def reuse_samples() -> Iterator[None]:
    """Draw each posterior's sample at most once inside the block.

    Every access to a Bayesian tensor inside the block returns the same sample, so a weight used
    twice (a recurrent cell, tied embeddings) sees one draw. `BayesianModule` enters this context
    around every forward pass; use it yourself when calling a module on which you registered
    posteriors with `register_posterior`. Blocks may be nested; samples are dropped when the
    outermost block exits.

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
            _samples.clear()


def draw(key: object, sample: Callable[[], Tensor]) -> Tensor:
    """Return ``sample()``, reusing the result for ``key`` inside a `reuse_samples` block."""
    if _depth == 0:
        return sample()
    value = _samples.get(id(key))
    if value is None:
        value = _samples[id(key)] = sample()
    return value
