"""`@bayesian`: a class decorator whose instances are built Bayesian."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch import nn

from torchbayesian import _sampling
from torchbayesian._selection import Filters
from torchbayesian.mixin import BayesianMixin
from torchbayesian.module import convert_
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.registration import PosteriorSpec, PriorSpec

__all__ = ["bayesian"]

_Module = TypeVar("_Module", bound=type[nn.Module])
_DEPTH = "_bayesian_init_depth"


@overload
def bayesian(cls: _Module, /) -> _Module: ...


@overload
def bayesian(
    *,
    posterior: PosteriorSpec = ...,
    prior: PriorSpec = ...,
    include: Filters = ...,
    exclude: Filters = ...,
    **posterior_kwargs: Any,
) -> Callable[[_Module], _Module]: ...


def bayesian(
    cls: _Module | None = None,
    /,
    *,
    posterior: PosteriorSpec = GaussianPosterior,
    prior: PriorSpec = None,
    include: Filters = None,
    exclude: Filters = None,
    **posterior_kwargs: Any,
) -> _Module | Callable[[_Module], _Module]:
    """Decorate an ``nn.Module`` subclass so that its instances are built Bayesian.

    Returns a subclass of the same name that, when an instance finishes ``__init__``, registers
    posteriors on its parameters exactly as `BayesianModule` would (same selection rules and
    arguments), runs every ``forward`` with one weight sample per tensor (`reuse_samples`), and
    has the `BayesianMixin` methods (`kl_divergence`, `log_prior`, `log_variational_posterior`,
    `sample_elbo`, `freeze`), unless the class defines methods of those names itself. Subclasses
    of the decorated class are converted once, after their own ``__init__``.

    Use it bare (``@bnn.bayesian``) or with arguments (``@bnn.bayesian(prior=bnn.LaplacePrior())``).

    Args:
        cls (type[nn.Module] | None): The class, when used without arguments.
        posterior (type[VariationalPosterior]): Posterior class built for each parameter.
        prior (Prior | Distribution | Mapping | Callable | None): Prior specification, as in `BayesianModule`.
        include (type | str | Sequence | None): Convert only parameters matching one of these.
        exclude (type | str | Sequence | None): Never convert parameters matching one of these.
        **posterior_kwargs: Passed to ``posterior.from_param``.

    Returns:
        type | Callable: The Bayesian subclass, or a decorator producing it.

    Raises:
        TypeError: If the decorated object is not an ``nn.Module`` subclass.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> @bnn.bayesian
        ... class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = torch.nn.Linear(3, 1)
        ...     def forward(self, x):
        ...         return self.fc(x)
        >>> net = Net()
        >>> bnn.is_bayesian(net), bool(net.kl_divergence() > 0)
        (True, True)
    """

    def convert(module: nn.Module) -> None:
        convert_(module, posterior, prior, include=include, exclude=exclude, posterior_kwargs=posterior_kwargs,
                 caller="bnn.bayesian")

    def decorate(target: _Module) -> _Module:
        if not (isinstance(target, type) and issubclass(target, nn.Module)):
            raise TypeError(f"@bayesian decorates nn.Module subclasses, got {target!r}.")

        def init_subclass(subclass: type[nn.Module], **kwargs: Any) -> None:
            super(decorated, subclass).__init_subclass__(**kwargs)
            _wrap(subclass, convert)

        namespace = {
            "__module__": target.__module__,
            "__qualname__": target.__qualname__,
            "__doc__": target.__doc__,
            "__init_subclass__": classmethod(init_subclass),
        }
        decorated = type(target.__name__, (target, BayesianMixin), namespace)
        _wrap(decorated, convert, inherited=True)
        return decorated  # type: ignore[return-value]

    return decorate if cls is None else decorate(cls)


def _wrap(cls: type[nn.Module], convert: Callable[[nn.Module], None], *, inherited: bool = False) -> None:
    init = cls.__init__ if inherited else cls.__dict__.get("__init__")
    if init is not None:
        cls.__init__ = _converting_init(init, convert)  # type: ignore[method-assign]
    forward = cls.forward if inherited else cls.__dict__.get("forward")
    if forward is not None:
        cls.forward = _sampling_forward(forward)  # type: ignore[method-assign]


def _converting_init(init: Callable[..., None], convert: Callable[[nn.Module], None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get(_DEPTH, 0)
        self.__dict__[_DEPTH] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__[_DEPTH] = depth
        if depth == 0:
            del self.__dict__[_DEPTH]
            convert(self)

    return __init__


def _sampling_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def sampled(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with _sampling.reuse_samples():
            return forward(self, *args, **kwargs)

    return sampled
