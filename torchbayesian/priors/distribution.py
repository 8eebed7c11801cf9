"""A prior wrapping any `torch.distributions.Distribution`."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.utils import lazy_property

from torchbayesian.priors.base import Prior

__all__ = ["DistributionPrior"]


class DistributionPrior(Prior):
    """Use any element-wise `torch.distributions.Distribution` as a prior, broadcast to the tensor's shape.

    The distribution's tensor arguments (those named in its ``arg_constraints`` and accepted by its
    constructor, e.g. ``df``, ``loc`` and ``scale`` of ``StudentT``) are stored as buffers, so the
    prior follows ``.to()`` and is saved in the ``state_dict``; `distribution` rebuilds the
    distribution from them and expands it to ``shape``. Passing a distribution as ``prior=`` to
    `register_posterior` or `BayesianModule` wraps it in this class.

    The distribution's support should be the real line (Normal, Laplace, StudentT, Cauchy,
    Logistic...): a weight outside the support has log-density ``-inf``.

    Args:
        distribution (Distribution): The prior, with a batch shape broadcastable to ``shape``.
        shape (torch.Size | tuple[int, ...] | None): Shape of the tensor; ``None`` keeps the
            distribution's own batch shape (``log_prob`` still broadcasts).

    Raises:
        TypeError: If ``distribution`` is not a `Distribution` or cannot be rebuilt from its arguments.
        ValueError: If its batch shape does not broadcast to ``shape``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> prior = bnn.DistributionPrior(torch.distributions.StudentT(3.0), shape=(2, 3))
        >>> prior.distribution.batch_shape
        torch.Size([2, 3])
    """

    def __init__(self, distribution: Distribution, shape: torch.Size | tuple[int, ...] | None = None) -> None:
        super().__init__()
        if not isinstance(distribution, Distribution):
            raise TypeError(
                f"DistributionPrior expects a torch.distributions.Distribution, got {type(distribution).__name__}."
            )
        self._family = type(distribution)
        self._validate_args = distribution._validate_args
        self._argument_names = _tensor_arguments(distribution)
        for name in self._argument_names:
            self.register_buffer(name, getattr(distribution, name).detach().clone())
        self.shape = None if shape is None else torch.Size(shape)
        if self.shape is not None:
            try:
                torch.broadcast_shapes(distribution.batch_shape, self.shape)
            except RuntimeError:
                raise ValueError(
                    f"DistributionPrior: the batch shape of {self._family.__name__} does not broadcast to the tensor.\n"
                    f"batch shape: {tuple(distribution.batch_shape)}\ntensor shape: {tuple(self.shape)}"
                ) from None
        try:
            self.distribution
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"DistributionPrior cannot rebuild {self._family.__name__} from its arguments "
                f"{self._argument_names} for shape {self.shape}: {error}\n"
                "Subclass torchbayesian.bnn.Prior for this distribution instead."
            ) from error

    @property
    def distribution(self) -> Distribution:
        """The wrapped distribution on this prior's device and dtype, expanded to ``shape``."""
        arguments = {name: getattr(self, name) for name in self._argument_names}
        distribution = self._family(**arguments, validate_args=self._validate_args)
        if self.shape is not None and distribution.batch_shape != self.shape:
            distribution = distribution.expand(torch.broadcast_shapes(distribution.batch_shape, self.shape))
        return distribution

    def extra_repr(self) -> str:
        arguments = ", ".join(f"{name}={_short(getattr(self, name))}" for name in self._argument_names)
        return f"{self._family.__name__}({arguments})"


def _tensor_arguments(distribution: Distribution) -> list[str]:
    accepted = inspect.signature(type(distribution).__init__).parameters
    names = []
    for name in distribution.arg_constraints:
        lazy = isinstance(inspect.getattr_static(type(distribution), name, None), lazy_property)
        if name not in accepted or (lazy and name not in vars(distribution)):
            continue
        if isinstance(getattr(distribution, name), Tensor):
            names.append(name)
    return names


def _short(tensor: Tensor) -> str:
    return f"{tensor.item():g}" if tensor.numel() == 1 else f"<tensor {tuple(tensor.shape)}>"
