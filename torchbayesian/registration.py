"""Register, find and remove posteriors on individual tensors, on top of `torch.nn.utils.parametrize`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn.utils import parametrize

from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.priors.base import Prior
from torchbayesian.priors.distribution import DistributionPrior
from torchbayesian.priors.gaussian import GaussianPrior

__all__ = ["is_bayesian", "posteriors", "register_posterior", "remove_posterior"]

PosteriorSpec = type[VariationalPosterior] | VariationalPosterior
PriorSpec: TypeAlias = (
    "Prior | Distribution | Mapping[str | type[nn.Module], PriorSpec] | Callable[[str, Tensor], PriorSpec] | None"
)

def register_posterior(
    module: nn.Module,
    name: str,
    posterior: PosteriorSpec = GaussianPosterior,
    *,
    prior: PriorSpec = None,
    **posterior_kwargs: Any,
) -> VariationalPosterior:
    """Make the tensor ``module.<name>`` Bayesian by registering a posterior on it.

    The posterior is built with ``posterior.from_param(tensor, **posterior_kwargs)`` (or used as
    given when it is an instance) and registered with
    `torch.nn.utils.parametrize.register_parametrization`. The original parameter is removed from
    the module: only the posterior's variational parameters remain. Reading ``module.<name>``
    then returns a sample; assigning a tensor to it raises a `ValueError`. If anything fails,
    the module is left unchanged.

    Args:
        module (nn.Module): Module that owns the tensor.
        name (str): Name of a floating-point, trainable parameter of ``module``.
        posterior (type[VariationalPosterior] | VariationalPosterior): Posterior class, or an
            instance of the tensor's shape.
        prior (Prior | Distribution | Mapping | Callable | None): Prior for the KL divergence;
            ``GaussianPrior(0, 1)`` by default. See `BayesianModule` for the accepted forms.
        **posterior_kwargs: Passed to ``posterior.from_param``.

    Returns:
        VariationalPosterior: The registered posterior.

    Raises:
        TypeError: If ``module`` is not a module, the tensor is not floating point,
            ``posterior``/``prior`` has the wrong type, or the posterior does not support the
            module (`VariationalPosterior.check_module`).
        ValueError: If ``name`` is not a parameter of ``module``, is already Bayesian, is frozen
            (``requires_grad=False``), or the posterior's shape or dtype does not match.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> layer = torch.nn.Linear(3, 2)
        >>> q = bnn.register_posterior(layer, "weight", bnn.GaussianPosterior, sigma_init=0.05)
        >>> bnn.is_bayesian(layer, "weight"), [n for n, _ in layer.named_parameters()][:2]
        (True, ['bias', 'parametrizations.weight.0.mu'])
    """
    param = check_tensor(module, name)
    built = build_posterior(posterior, param, f"{type(module).__name__}.{name}", posterior_kwargs)
    built.check_module(module, name)
    built.prior = resolve_prior(prior, param, name, module)
    attach(module, name, built)
    return built


def remove_posterior(
    module: nn.Module, name: str, *, leave: Literal["mean", "sample"] = "mean"
) -> nn.Parameter:
    """Remove the posterior from ``module.<name>`` and restore a plain trainable parameter.

    Args:
        module (nn.Module): Module that owns the tensor.
        name (str): Name of a Bayesian tensor of ``module``.
        leave (str): ``"mean"`` keeps the posterior mean, ``"sample"`` one fresh sample.

    Returns:
        nn.Parameter: The new parameter, now ``module.<name>`` (add it to your optimizer).

    Raises:
        ValueError: If the tensor is not Bayesian or ``leave`` is unknown.
    """
    if leave not in ("mean", "sample"):
        raise ValueError(f"remove_posterior: leave must be 'mean' or 'sample', got {leave!r}.")
    posterior = get_posterior(module, name)
    if posterior is None:
        raise ValueError(f"{type(module).__name__}.{name} has no posterior to remove.")
    with torch.no_grad():
        value = posterior.mean if leave == "mean" else posterior.sample_parameters()
        value = value.detach().clone()
    _own_parametrized_class(module)
    was_frozen, posterior.frozen = posterior.frozen, True
    try:
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    finally:
        posterior.frozen = was_frozen
    posterior.on_remove(module, name)
    restored = nn.Parameter(value)
    module.register_parameter(name, restored)
    return restored


def _own_parametrized_class(module: nn.Module) -> None:
    # parametrize deletes the property from the module's class on removal; deep copies share that
    # class, so give this module a private copy first.
    cls = type(module)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def is_bayesian(module: nn.Module, name: str | None = None) -> bool:
    """Return whether ``module.<name>`` has a posterior, or, without ``name``, whether any tensor in ``module`` does."""
    if name is not None:
        return get_posterior(module, name) is not None
    return next(posteriors(module), None) is not None


def posteriors(module: nn.Module) -> Iterator[tuple[str, VariationalPosterior]]:
    """Yield ``(qualified_name, posterior)`` for every posterior in ``module``, each once.

    A posterior shared by tied tensors is yielded under the first name it is found at. The model
    is walked on every call, so the result always reflects its current structure.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        >>> [name for name, _ in bnn.posteriors(model.module)]
        ['0.weight', '0.bias']
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}.")
    return _unique(sites(module))


def _unique(found: Iterator[tuple[str, nn.Module, str, VariationalPosterior]]) -> Iterator[tuple[str, VariationalPosterior]]:
    seen: set[int] = set()
    for qualified_name, _, _, posterior in found:
        if id(posterior) not in seen:
            seen.add(id(posterior))
            yield qualified_name, posterior


def sites(module: nn.Module) -> Iterator[tuple[str, nn.Module, str, VariationalPosterior]]:
    """Yield ``(qualified_name, owner, tensor_name, posterior)`` for every registration, tied ones included."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}.")
    for prefix, owner in module.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(owner):
            continue
        for tensor_name, parametrizations in owner.parametrizations.items():
            for parametrization in parametrizations:
                if isinstance(parametrization, VariationalPosterior):
                    yield f"{prefix}.{tensor_name}" if prefix else tensor_name, owner, tensor_name, parametrization


def get_posterior(module: nn.Module, name: str) -> VariationalPosterior | None:
    """Return the posterior registered on ``module.<name>``, if any."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}.")
    if not parametrize.is_parametrized(module, name):
        return None
    for parametrization in module.parametrizations[name]:
        if isinstance(parametrization, VariationalPosterior):
            return parametrization
    return None


def check_tensor(module: nn.Module, name: str) -> nn.Parameter:
    """Return ``module.<name>`` if it can be made Bayesian, else raise a descriptive error."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"register_posterior expects an nn.Module, got {type(module).__name__}.")
    owner = type(module).__name__
    if get_posterior(module, name) is not None:
        raise ValueError(f"{owner}.{name} is already Bayesian; call remove_posterior first.")
    if parametrize.is_parametrized(module, name):
        raise ValueError(f"{owner}.{name} already has a parametrization; a posterior must be the only one.")
    param = module._parameters.get(name)
    if param is None:
        available = ", ".join(n for n, p in module.named_parameters(recurse=False)) or "none"
        raise ValueError(f"{owner} has no parameter {name!r}; its parameters are: {available}.")
    if not param.is_floating_point():
        raise TypeError(f"{owner}.{name} has dtype {param.dtype}; a posterior needs a floating-point tensor.")
    if not param.requires_grad:
        raise ValueError(
            f"{owner}.{name} is frozen (requires_grad=False) and would become trainable; "
            "call requires_grad_() on it first if you want it Bayesian."
        )
    return param


def build_posterior(
    posterior: PosteriorSpec, param: Tensor, where: str, posterior_kwargs: dict[str, Any]
) -> VariationalPosterior:
    """Build (or check) the posterior for ``param``; ``where`` names the tensor in error messages."""
    if isinstance(posterior, type) and issubclass(posterior, VariationalPosterior):
        try:
            built = posterior.from_param(param, **posterior_kwargs)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}: {error}") from error
    elif isinstance(posterior, VariationalPosterior):
        if posterior_kwargs:
            raise TypeError(f"{where}: keyword arguments {sorted(posterior_kwargs)} need a posterior class, not an instance.")
        built = posterior
    else:
        raise TypeError(
            f"{where}: posterior must be a VariationalPosterior subclass or instance, got {posterior!r}."
        )
    if built.shape != param.shape:
        raise ValueError(
            f"{where}: posterior shape does not match the tensor.\n"
            f"tensor shape: {tuple(param.shape)}\nposterior shape: {tuple(built.shape)}"
        )
    if built.dtype != param.dtype:
        raise ValueError(
            f"{where}: posterior dtype does not match the tensor.\n"
            f"tensor dtype: {param.dtype}\nposterior dtype: {built.dtype}"
        )
    return built


def resolve_prior(prior: PriorSpec, param: Tensor, qualified_name: str = "", owner: nn.Module | None = None) -> Prior:
    """Return the prior for ``param`` on its device and dtype.

    ``prior`` may be ``None`` (a new standard Gaussian), a `Prior`, a
    `torch.distributions.Distribution` (wrapped in a `DistributionPrior` of the tensor's shape), a
    mapping from a glob on ``qualified_name`` or a module type (matched against ``owner``) to any
    of these (the first matching entry wins; a standard Gaussian when none matches), or a callable
    ``(qualified_name, param) -> prior``.
    """
    if isinstance(prior, Mapping):
        for key, value in prior.items():
            if _prior_key_matches(key, qualified_name, owner):
                return resolve_prior(value, param, qualified_name, owner)
        return resolve_prior(None, param, qualified_name, owner)
    if prior is None:
        prior = GaussianPrior()
    elif isinstance(prior, Distribution):
        prior = DistributionPrior(prior, param.shape)
    elif not isinstance(prior, nn.Module) and callable(prior):
        return resolve_prior(prior(qualified_name, param), param, qualified_name, owner)
    if not isinstance(prior, Prior):
        raise TypeError(
            f"{qualified_name or 'tensor'}: prior must be a Prior, a torch.distributions.Distribution, a mapping, "
            f"a callable (qualified_name, param) -> prior, or None; got {type(prior).__name__}."
        )
    prior = prior.to(device=param.device, dtype=param.dtype)
    batch_shape = prior.distribution.batch_shape
    try:
        fits = torch.broadcast_shapes(batch_shape, param.shape) == param.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{qualified_name or 'tensor'}: the prior {type(prior).__name__} does not broadcast to the tensor's shape.\n"
            f"prior shape: {tuple(batch_shape)}\ntensor shape: {tuple(param.shape)}"
        )
    return prior


def _prior_key_matches(key: object, qualified_name: str, owner: nn.Module | None) -> bool:
    if isinstance(key, str):
        return fnmatchcase(qualified_name, key)
    if isinstance(key, type) and issubclass(key, nn.Module):
        return owner is not None and isinstance(owner, key)
    raise TypeError(f"prior mapping keys must be glob strings or nn.Module subclasses, got {key!r}.")


def attach(module: nn.Module, name: str, posterior: VariationalPosterior) -> None:
    """Register ``posterior`` as the parametrization of ``module.<name>``."""
    posterior._registered = False  # a tied tensor registers the same posterior again
    parametrize.register_parametrization(module, name, posterior, unsafe=True)
    posterior._registered = True
    posterior.on_register(module, name)
