"""Bayesian LoRA: variational posteriors on the adapter matrices of a PEFT model, saved the way PEFT shares adapters.

Importing this module imports ``peft``; ``from torchbayesian import bnn`` does not, and loads these
names on first use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from enum import Enum
from typing import Any, NamedTuple

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from torchbayesian import _sampling
from torchbayesian._math import softplus_inverse
from torchbayesian._validation import positive_finite
from torchbayesian.module import BayesianModule
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.registration import PriorSpec, get_posterior, is_bayesian, sites

__all__ = ["LoraTargets", "bayesian_lora", "load_bayesian_lora"]

_MATRICES = {"A": ("lora_A", "lora_embedding_A"), "B": ("lora_B", "lora_embedding_B")}


class LoraTargets(str, Enum):
    """Which LoRA matrices `bayesian_lora` makes Bayesian."""

    A = "A"
    """The down-projections ``lora_A`` only (BLoB, Wang et al., 2024); ``lora_B`` stays a trainable point estimate."""
    AB = "AB"
    """Both ``lora_A`` and ``lora_B``."""


def bayesian_lora(
    model: nn.Module,
    posterior: type[GaussianPosterior] = GaussianPosterior,
    prior: PriorSpec = None,
    *,
    targets: LoraTargets | str = LoraTargets.A,
    sigma_ratio: float = 0.1,
    fallback: type[GaussianPosterior] = GaussianPosterior,
) -> BayesianModule:
    """Put Gaussian posteriors on the LoRA adapter matrices of a PEFT model and wrap it in a `BayesianModule`.

    Only the adapters become Bayesian: the frozen base weights stay deterministic and frozen, and
    other trainable tensors (a classifier head in ``modules_to_save``) stay trainable point
    estimates, so `kl_divergence` sums over the adapter elements alone. By default only the
    ``lora_A`` matrices are Bayesian, the choice of BLoB (Wang et al., 2024, "BLoB: Bayesian
    Low-Rank Adaptation by Backpropagation for Large Language Models"). The default ``posterior``
    draws one weight sample of each adapter per forward pass (`GaussianPosterior`); pass
    `FlipoutPosterior` for BLoB's Flipout on the ``nn.Linear`` adapters (per-example noise, lower
    gradient variance, a second thin matrix product per adapter), with ``fallback`` for the adapters
    Flipout does not support (the ``lora_embedding_A`` of an embedding adapter). On the pretrained
    MiniLM the default was as well calibrated as Flipout and its training step cheaper
    (``benchmarks/README.md``).

    **Defaults from the adapter's initialisation.** Each matrix gets the prior
    $\\mathcal{N}(0, s^2)$ with $s$ the standard deviation PEFT initialised it with: the empirical
    standard deviation of its values ($1/\\sqrt{3\\,d_{in}}$ for PEFT's default Kaiming-uniform
    ``lora_A``), or $1/\\sqrt{3r}$, the Kaiming-uniform scale of its fan-in $r$, for a matrix
    initialised to zero (``lora_B``). The posterior mean starts at the current values and the
    posterior standard deviation at ``sigma_ratio * s``.

    **Saving.** The model saves through PEFT's own ``save_pretrained`` (on the returned module or
    on the `PeftModel`): each Bayesian matrix is written under PEFT's own key (``...lora_A.weight``)
    holding the posterior **mean**, with the variational scale and the prior beside it
    (``...lora_A.weight_rho``, ``...lora_A.weight_prior_loc``, ``...lora_A.weight_prior_scale``).
    The directory is a standard PEFT adapter: ``PeftModel.from_pretrained`` loads it as a plain
    LoRA at the posterior mean (a deterministic export), and `load_bayesian_lora` loads it back as
    the same posterior, bit for bit. The same key names appear in the wrapped model's
    ``state_dict``, and ``load_state_dict`` reads them back.

    **Merging.** ``merge_and_unload`` called on the returned module merges the posterior mean
    (``merge_and_unload`` on the inner `PeftModel` outside `frozen` would merge one weight sample).

    **Sampling.** A call of a PEFT LoRA layer with a Bayesian adapter made outside any sampling
    scope (the layer called on its own, or recomputed by re-entrant activation checkpointing)
    opens a scope of its own, so that PEFT's read of ``lora_A.weight`` and ``lora_A``'s own call
    see one draw, as inside the wrapper's forward.

    Args:
        model (nn.Module): A ``peft.PeftModel`` (or any model with PEFT LoRA layers) whose adapters
            are trainable.
        posterior (type[GaussianPosterior]): Posterior of the adapter matrices; a `GaussianPosterior`
            subclass, e.g. `FlipoutPosterior` for Flipout on ``nn.Linear`` adapters.
        prior (Prior | Distribution | Mapping | Callable | None): Prior of each Bayesian matrix, as in
            `BayesianModule`; ``None`` derives it from the initialisation (above).
        targets (LoraTargets | str): ``"A"`` (default) or ``"AB"``.
        sigma_ratio (float): Initial posterior standard deviation relative to the prior scale $s$.
        fallback (type[GaussianPosterior]): Posterior for adapter tensors ``posterior`` does not
            support (embedding adapters).

    Returns:
        BayesianModule: The wrapper around ``model``; ``model`` is converted in place.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or a posterior is not a `GaussianPosterior` subclass.
        ValueError: If ``model`` has no trainable LoRA matrix, ``targets`` is unknown, or
            ``sigma_ratio`` is not a finite positive number.

    Example:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from torchbayesian import bnn
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> peft_model = get_peft_model(net, LoraConfig(r=2, target_modules=["0", "2"]))
        >>> model = bnn.bayesian_lora(peft_model)
        >>> ["lora_A" in name for name, _ in model.posteriors()]
        [True, True]
        >>> model.kl_divergence().shape
        torch.Size([])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bayesian_lora expects a PEFT model (nn.Module), got {type(model).__name__}.")
    for name, value in (("posterior", posterior), ("fallback", fallback)):
        if not (isinstance(value, type) and issubclass(value, GaussianPosterior)):
            raise TypeError(f"bayesian_lora: {name} must be a GaussianPosterior subclass, got {value!r}.")
    try:
        matrices = [prefix for letter in LoraTargets(targets).value for prefix in _MATRICES[letter]]
    except ValueError:
        raise ValueError(f"bayesian_lora: targets must be 'A' or 'AB', got {targets!r}.") from None
    positive_finite("bayesian_lora", "sigma_ratio", sigma_ratio)
    include = [f"*.{matrix}.*" for matrix in matrices]
    if not any(_is_lora_matrix(name, matrices) and p.requires_grad for name, p in model.named_parameters()):
        raise ValueError(
            f"bayesian_lora: {type(model).__name__} has no trainable LoRA matrix ({' or '.join(matrices)}); "
            "pass a model from peft.get_peft_model(model, LoraConfig(...)), or load adapters with "
            "is_trainable=True."
        )
    scales = {name: _initial_scale(p) for name, p in model.named_parameters() if _is_lora_matrix(name, matrices)}
    wrapped = BayesianModule(
        model,
        posterior,
        _derived_prior(scales) if prior is None else prior,
        include=include,
        fallback=fallback,
    )
    with torch.no_grad():
        for name, built in wrapped.posteriors():
            built.rho.copy_(softplus_inverse(torch.tensor(sigma_ratio * scales[name], dtype=torch.float64)))
    _install_key_hooks(model)
    _install_scope_hooks(model)
    return wrapped


def load_bayesian_lora(
    base_model: nn.Module,
    model_id: str | os.PathLike[str],
    posterior: type[GaussianPosterior] = GaussianPosterior,
    prior: PriorSpec = None,
    *,
    fallback: type[GaussianPosterior] = GaussianPosterior,
    adapter_name: str = "default",
    **peft_kwargs: Any,
) -> BayesianModule:
    """Load a Bayesian LoRA adapter saved with ``save_pretrained`` back into a `BayesianModule`.

    Loads the adapter with ``peft.PeftModel.from_pretrained`` (trainable), makes Bayesian exactly
    the matrices saved with a variational scale, and loads the saved means, scales and priors with
    ``peft.set_peft_model_state_dict``. Pass the ``posterior``, ``prior`` and ``fallback`` classes
    used before saving when they were not the defaults.

    Args:
        base_model (nn.Module): The base model, as given to ``get_peft_model`` before training.
        model_id (str | os.PathLike): Directory (or Hub id already in the local cache) of the adapter.
        posterior (type[GaussianPosterior]): As in `bayesian_lora`.
        prior (Prior | Distribution | Mapping | Callable | None): As in `bayesian_lora`; the saved
            prior's ``loc`` and ``scale`` are loaded into it.
        fallback (type[GaussianPosterior]): As in `bayesian_lora`.
        adapter_name (str): Name of the adapter in the returned model.
        **peft_kwargs: More arguments of ``PeftModel.from_pretrained``.

    Returns:
        BayesianModule: The Bayesian LoRA model, equal to the saved one.

    Raises:
        ValueError: If the adapter holds no Bayesian matrix or a saved tensor is not loaded.
    """
    peft_kwargs["is_trainable"] = True
    model = PeftModel.from_pretrained(base_model, model_id, adapter_name=adapter_name, **peft_kwargs)
    weights = load_peft_weights(os.fspath(model_id), device=str(next(model.parameters()).device))
    bayesian = {key[: -len("_rho")] for key in weights if key.endswith("_rho")}
    if not bayesian:
        raise ValueError(
            f"load_bayesian_lora: {os.fspath(model_id)!r} holds no Bayesian LoRA matrix (no '_rho' key); "
            "load it with peft.PeftModel.from_pretrained."
        )
    targets = LoraTargets.AB if any(_is_lora_matrix(key, _MATRICES["B"]) for key in bayesian) else LoraTargets.A
    wrapped = bayesian_lora(model, posterior, prior, targets=targets, fallback=fallback)
    result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if _is_lora_matrix(key, _MATRICES["A"] + _MATRICES["B"])]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"load_bayesian_lora: {os.fspath(model_id)!r} does not match the converted model.\n"
            f"missing: {missing}\nunexpected: {result.unexpected_keys}"
        )
    return wrapped


def _is_lora_matrix(name: str, matrices: tuple[str, ...] | list[str]) -> bool:
    return any(f".{matrix}." in f".{name}." for matrix in matrices)


def _initial_scale(param: Tensor) -> float:
    values = param.detach().float()
    scale = values.std().item() if values.numel() > 1 else 0.0
    if scale > 0 and math.isfinite(scale):
        return scale
    fan_in = param.shape[1] if param.dim() > 1 else param.shape[0]
    return 1.0 / math.sqrt(3.0 * max(fan_in, 1))


def _derived_prior(scales: Mapping[str, float]) -> Any:
    def prior(name: str, param: Tensor) -> GaussianPrior:
        return GaussianPrior(0.0, scales[name])

    return prior


def _install_key_hooks(model: nn.Module) -> None:
    """Give every Bayesian LoRA matrix PEFT's key (``...lora_A.default.weight``) in the state dict.

    The hooks' handles are kept on each owner (``_bayesian_lora_key_hooks``), whose presence tells
    a second `bayesian_lora` call not to add them twice.
    """
    owners = {id(owner): owner for _, owner, _, _ in sites(model)}
    for owner in owners.values():
        if isinstance(getattr(owner, "_bayesian_lora_key_hooks", None), _KeyHooks):
            continue
        owner._bayesian_lora_key_hooks = _KeyHooks(
            owner.register_state_dict_post_hook(_to_peft_keys),
            owner.register_load_state_dict_pre_hook(_from_peft_keys),
        )


def _install_scope_hooks(model: nn.Module) -> None:
    """Run every call of a LoRA layer with a Bayesian adapter in a sampling scope (its own if none is open).

    PEFT's LoRA layer reads ``lora_A.weight`` (for its dtype) before calling ``lora_A``: two reads
    of one tensor, which must see one sample. A `BayesianModule` forward opens a scope around
    both, but re-entrant activation checkpointing recomputes the layer after that scope has
    closed; the layer's own scope then gives the recomputation the forward's single draw. The
    `_CallScope` is kept on the layer (``_bayesian_lora_scope``), so that a second `bayesian_lora`
    call does not add it twice.
    """
    for layer in model.modules():
        if not (isinstance(layer, LoraLayer) and is_bayesian(layer)):
            continue
        if not isinstance(getattr(layer, "_bayesian_lora_scope", None), _CallScope):
            layer._bayesian_lora_scope = _CallScope(layer)


class _KeyHooks(NamedTuple):
    """The handles of the state-dict hooks that rename a module's Bayesian LoRA entries."""

    save: RemovableHandle
    load: RemovableHandle


class _CallScope:
    """A forward pre-hook that opens a sampling scope when none is open, and a forward hook that closes it.

    ``handles`` holds the two hooks' `RemovableHandle`s.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.handles = (
            layer.register_forward_pre_hook(self.before),
            layer.register_forward_hook(self.after, always_call=True),
        )

    def before(self, layer: nn.Module, args: Any) -> None:
        _sampling.open_scope(self)

    def after(self, layer: nn.Module, args: Any, output: Any) -> None:
        _sampling.close_scope(self)


def _renamed_keys(module: nn.Module) -> list[tuple[str, str, torch.Size]]:
    """``(key under parametrizations, PEFT-style key, shape)`` of the entries of ``module``'s Bayesian tensors.

    The mean takes the tensor's own name; the other entries are appended with underscores, so
    that PEFT's adapter-name handling, which looks at the second-to-last key element, applies.
    """
    pairs = []
    for name in getattr(module, "parametrizations", {}):
        posterior = get_posterior(module, name)
        if not isinstance(posterior, GaussianPosterior):
            continue
        for key, value in posterior.state_dict().items():
            flat = name if key == "mu" else f"{name}_{key.replace('.', '_')}"
            pairs.append((f"parametrizations.{name}.0.{key}", flat, value.shape))
    return pairs


def _to_peft_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    # Scalars (a prior's loc and scale) are stored as [1, 1]: PEFT refuses LoRA tensors of fewer dimensions.
    for inner, flat, _ in _renamed_keys(module):
        if prefix + inner in state_dict:
            value = state_dict.pop(prefix + inner)
            state_dict[prefix + flat] = value.reshape(1, -1) if value.dim() < 2 else value


def _from_peft_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    for inner, flat, shape in _renamed_keys(module):
        if prefix + flat in state_dict:
            value = state_dict.pop(prefix + flat)
            state_dict[prefix + inner] = value.reshape(shape) if value.numel() == shape.numel() else value
