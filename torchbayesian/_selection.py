"""Which parameters of a model a conversion makes Bayesian: the ``include``/``exclude`` filters."""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from torch import nn

Filter = type[nn.Module] | str
Filters = Filter | Sequence[Filter] | None
Site = tuple[str, str, nn.Module, str]
"""Where a parameter lives: ``(qualified name, owner's module name, owner, tensor name)``."""

_NORMALIZATION_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
)
_NORMALIZATION_NAME = re.compile(r"Norm(\d+d)?$")
_LISTED_NAMES = 8


def as_patterns(value: Filters, argument: str) -> list[Filter]:
    """Return ``value`` (one filter, several, or ``None``) as a list; ``TypeError`` for a non-filter entry."""
    if value is None:
        return []
    patterns = [value] if isinstance(value, (str, type)) else list(value)
    for pattern in patterns:
        if not (isinstance(pattern, str) or (isinstance(pattern, type) and issubclass(pattern, nn.Module))):
            raise TypeError(
                f"BayesianModule: {argument} entries must be nn.Module subclasses or glob strings, got {pattern!r}."
            )
    return patterns


def parameter_sites(model: nn.Module) -> dict[nn.Parameter, list[Site]]:
    """Every parameter of ``model`` with all the places it is registered (several for tied weights)."""
    found: dict[nn.Parameter, list[Site]] = {}
    seen: set[tuple[int, str]] = set()
    for module_name, owner in model.named_modules(remove_duplicate=False):
        for tensor_name, param in owner.named_parameters(recurse=False, remove_duplicate=False):
            if (id(owner), tensor_name) in seen:
                continue
            seen.add((id(owner), tensor_name))
            qualified_name = f"{module_name}.{tensor_name}" if module_name else tensor_name
            found.setdefault(param, []).append((qualified_name, module_name, owner, tensor_name))
    return found


def selected_sites(param: nn.Parameter, param_sites: list[Site], include: list[Filter],
                   exclude: list[Filter]) -> list[Site]:
    """Return the names under which ``param`` is selected; a tied tensor is Bayesian if any one is.

    Empty when the tensor is frozen or not floating point, or when ``exclude`` matches any of its names.
    """
    if not param.requires_grad or not param.is_floating_point():
        return []
    if any(_matches(exclude, name, module_name, owner) for name, module_name, owner, _ in param_sites):
        return []
    if include:
        return [site for site in param_sites if _matches(include, site[0], site[1], site[2])]
    return [site for site in param_sites if not _is_normalization(site[2])]


def check_selected_any(model: nn.Module, include: Filters, exclude: Filters, caller: str) -> None:
    """Called when a conversion selected no parameter: raise if ``include`` was given, else warn.

    ``caller`` (e.g. ``"BayesianModule"``) names the public entry point the messages start with.

    Raises:
        ValueError: If ``include`` matches no trainable floating-point parameter of ``model``.
    """
    trainable = [name for name, param in model.named_parameters() if param.requires_grad and param.is_floating_point()]
    more = len(trainable) - _LISTED_NAMES
    listed = ", ".join(trainable[:_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")
    if include is not None:
        raise ValueError(
            f"{caller}: include={include!r}" + (f" with exclude={exclude!r}" if exclude is not None else "")
            + f" selects no trainable floating-point parameter of {type(model).__name__}; "
            + (f"its trainable parameters are: {listed}." if trainable else "it has none (frozen parameters stay "
               "deterministic).")
        )
    if not trainable:
        reason = "it has no trainable floating-point parameter (frozen parameters stay deterministic)"
    elif exclude is not None:
        reason = f"exclude={exclude!r} leaves none of its trainable parameters ({listed})"
    else:
        reason = "its trainable parameters all belong to normalization layers, which stay deterministic unless included"
    warnings.warn(f"{caller}: no parameter of {type(model).__name__} was made Bayesian: {reason}.", UserWarning,
                  stacklevel=_outside_the_library())


def _outside_the_library() -> int:
    """The ``stacklevel`` of the innermost caller outside torchbayesian, for its caller's ``warnings.warn``.

    Conversions reach the warning through several public entry points (`BayesianModule`,
    `to_bayesian`, the decorator and the Blitz-style layers), each at its own depth.
    """
    package = Path(__file__).resolve().parent
    frame, level = inspect.currentframe(), 0
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(package):
        frame, level = frame.f_back, level + 1
    return max(level, 1)


def _is_normalization(module: nn.Module) -> bool:
    """Return whether ``module`` is a normalization layer, by type or by a class name ending in ``Norm``."""
    return isinstance(module, _NORMALIZATION_TYPES) or bool(_NORMALIZATION_NAME.search(type(module).__name__))


def _matches(patterns: list[Filter], qualified_name: str, module_name: str, owner: nn.Module) -> bool:
    for pattern in patterns:
        if isinstance(pattern, str):
            if fnmatchcase(qualified_name, pattern) or (module_name and fnmatchcase(module_name, pattern)):
                return True
        elif isinstance(owner, pattern):
            return True
    return False
