"""Move weights between deterministic checkpoints and Bayesian models."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from torchbayesian.module import BayesianModule
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.registration import remove_posterior, sites

__all__ = ["IncompatibleKeys", "load_deterministic_state_dict", "to_deterministic"]

_PREFIX = "module."


class IncompatibleKeys(NamedTuple):
    """Keys of a deterministic state dict that did not match the model (returned when ``strict=False``).

    Attributes:
        missing_keys (list[str]): Tensors of the model that the state dict does not provide.
        unexpected_keys (list[str]): Keys of the state dict that name no tensor of the model.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_deterministic_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool = True
) -> IncompatibleKeys:
    """Load the state dict of a plain (deterministic) model into a Bayesian model as posterior means.

    Each key naming a Bayesian tensor (``"0.weight"``) sets the mean of the posterior registered
    there with `VariationalPosterior.set_mean_`; the scales are left as they are. All other keys
    (deterministic parameters, buffers such as BatchNorm statistics) are loaded normally. Keys are
    relative to the wrapped model; a leading ``"module."`` (from `BayesianModule` or
    ``DistributedDataParallel``) is accepted and stripped. A posterior shared by tied tensors
    is satisfied by any one of its names.

    Args:
        model (nn.Module): A `BayesianModule`, or a model converted with `register_posterior`.
        state_dict (Mapping[str, Tensor]): ``plain_model.state_dict()`` of the same architecture.
        strict (bool): Raise on missing or unexpected keys instead of returning them.

    Returns:
        IncompatibleKeys: The missing and unexpected keys (both empty when ``strict`` passes).

    Raises:
        TypeError: If ``model`` is not a module or ``state_dict`` is not a mapping of tensors.
        ValueError: If a tensor's shape differs from the model's, or, with ``strict``, keys are
            missing or unexpected.

    Example:
        >>> import copy, torch
        >>> from torchbayesian import bnn
        >>> plain = torch.nn.Linear(3, 2)
        >>> model = bnn.BayesianModule(torch.nn.Linear(3, 2))
        >>> bnn.load_deterministic_state_dict(model, plain.state_dict())
        IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> with bnn.frozen(model):
        ...     assert torch.equal(model(torch.ones(1, 3)), plain(torch.ones(1, 3)))
    """
    inner = _inner(model, "load_deterministic_state_dict")
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"load_deterministic_state_dict expects a mapping of tensors, got {type(state_dict).__name__}."
        )
    bayesian: dict[str, VariationalPosterior] = {name: posterior for name, _, _, posterior in sites(inner)}
    plain = {
        key: value for key, value in inner.state_dict(keep_vars=True).items() if not _is_variational_key(key)
    }
    means: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for raw_key, value in state_dict.items():
        key = raw_key if raw_key in bayesian or raw_key in plain else raw_key.removeprefix(_PREFIX)
        if key not in bayesian and key not in plain:
            unexpected.append(raw_key)
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"load_deterministic_state_dict: {raw_key!r} holds a {type(value).__name__}, not a Tensor.")
        expected = bayesian[key].shape if key in bayesian else plain[key].shape
        if value.shape != expected:
            raise ValueError(
                f"load_deterministic_state_dict: {raw_key!r} has the wrong shape.\n"
                f"checkpoint shape: {tuple(value.shape)}\nmodel shape: {tuple(expected)}"
            )
        (means if key in bayesian else rest)[key] = value
    loaded = {id(bayesian[key]) for key in means}
    missing = [key for key, posterior in bayesian.items() if id(posterior) not in loaded]
    missing += [key for key in plain if key not in rest]
    if strict and (missing or unexpected):
        raise ValueError(
            "load_deterministic_state_dict: the checkpoint does not match the model.\n"
            f"missing keys: {missing}\nunexpected keys: {unexpected}\n"
            "Pass strict=False to load the matching keys only."
        )
    with torch.no_grad():
        for key, value in means.items():
            bayesian[key].set_mean_(value)
    inner.load_state_dict(rest, strict=False)
    return IncompatibleKeys(missing, unexpected)


def to_deterministic(model: nn.Module) -> nn.Module:
    """Return a plain copy of the model with every posterior replaced by a parameter holding its mean.

    The copy has the original classes, no parametrizations, and the state-dict keys of the model
    before conversion, so it loads into (and saves like) the deterministic architecture. Tensors
    tied in the Bayesian model share one parameter in the copy. ``model`` itself is not changed.

    Args:
        model (nn.Module): A `BayesianModule` (its wrapped model is exported) or any module with
            posteriors.

    Returns:
        nn.Module: The deterministic model, on the device and in the dtype of ``model``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(3, 2))
        >>> plain = bnn.to_deterministic(model)
        >>> type(plain).__name__, sorted(plain.state_dict())
        ('Linear', ['bias', 'weight'])
    """
    exported = copy.deepcopy(_inner(model, "to_deterministic"))
    means: dict[int, nn.Parameter] = {}
    for _, owner, tensor_name, posterior in list(sites(exported)):
        parameter = remove_posterior(owner, tensor_name, leave="mean")
        if id(posterior) in means:
            owner.register_parameter(tensor_name, means[id(posterior)])
        else:
            means[id(posterior)] = parameter
    return exported


def _inner(model: nn.Module, caller: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects an nn.Module, got {type(model).__name__}.")
    return model.module if isinstance(model, BayesianModule) else model


def _is_variational_key(key: str) -> bool:
    return key.startswith("parametrizations.") or ".parametrizations." in key
