"""`BayesianModule`: make every eligible tensor of an existing model Bayesian in one call."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchbayesian import _sampling, generation
from torchbayesian._selection import Filters, as_patterns, check_selected_any, parameter_sites, selected_sites
from torchbayesian.mixin import BayesianMixin
from torchbayesian.posteriors.base import VariationalPosterior
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.registration import (
    PosteriorSpec,
    PriorSpec,
    attach,
    build_posterior,
    get_posterior,
    is_bayesian,
    posteriors,
    resolve_prior,
    sites,
)

__all__ = ["BayesianModule", "frozen"]

class BayesianModule(BayesianMixin, nn.Module):
    """Wrap a model and register a posterior on each of its trainable floating-point parameters.

    The model is converted **in place** and kept as `module`. Each selected parameter is replaced
    by ``posterior.from_param(param, **posterior_kwargs)``; with the default `GaussianPosterior`
    the posterior mean starts at the parameter's current value, so pretrained weights stay the mean.

    Conversion rules:

    - Parameters with ``requires_grad=False`` stay deterministic and frozen.
    - Normalization layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm, InstanceNorm and any module
      whose class name ends in ``Norm``) stay deterministic unless ``include`` selects them.
    - ``include``/``exclude`` select by module type or by glob on the parameter's qualified name
      (``"classifier.*"``) or its module's (``"encoder.layer.0*"``).
    - A parameter reachable under several names (tied weights) gets **one** posterior, registered
      at every name, so the tensors stay tied and see one sample per forward. It is converted when
      any of its names is selected (``include=[nn.Linear]`` converts a bias that a Linear shares
      with another module) and none is excluded.
    - A posterior that supports only some layers (`FlipoutPosterior`,
      `LocalReparameterizationPosterior`) goes on the tensors it supports and ``fallback`` on the
      others; without ``fallback``, an unsupported tensor raises a ``TypeError`` and nothing changes.

    `forward` passes every argument through and returns what the model returns. Each Bayesian
    tensor is sampled exactly once per forward, in training and evaluation mode alike; `freeze`
    (or the `frozen` context manager) makes every posterior return its mean instead. The KL,
    log-density and ELBO methods (`kl_divergence`, `log_prior`, `log_variational_posterior`,
    `sample_elbo`) come from `BayesianMixin`.

    Hugging Face and PEFT methods of the wrapped model are available on the wrapper:
    ``merge_and_unload`` merges the posterior means, and ``gradient_checkpointing_enable`` and
    ``activation_checkpointing_enable`` checkpoint non-re-entrantly with
    ``context_fn=replay_samples`` (see `replay_samples`) unless given ``use_reentrant=True``.

    Args:
        module (nn.Module): The model to convert.
        posterior (type[VariationalPosterior]): Posterior class built for each parameter.
        prior (Prior | Distribution | Mapping | Callable | None): Prior of each posterior: a `Prior`
            shared by all of them; any ``torch.distributions.Distribution`` (broadcast to each
            tensor's shape); a mapping ``{glob or module type: prior}`` matched against each
            parameter's qualified name or owning module (first match wins, standard Gaussian when
            none does); or a callable ``(qualified_name, param) -> prior``. A standard Gaussian per
            tensor by default.
        include (type | str | Sequence | None): Convert only parameters matching one of these.
        exclude (type | str | Sequence | None): Never convert parameters matching one of these.
        fallback (type[VariationalPosterior] | None): Posterior class for the parameters that
            ``posterior`` does not support (see `VariationalPosterior.check_module`).
        **posterior_kwargs: Passed to ``posterior.from_param`` and ``fallback.from_param``
            (e.g. ``sigma_init=1e-3``).

    Attributes:
        module (nn.Module): The converted model.

    Raises:
        TypeError: If ``module`` is not an ``nn.Module``, a filter has the wrong type, or
            ``posterior`` does not support a selected parameter and no ``fallback`` is given.
        ValueError: If ``module`` already holds posteriors, or ``include`` selects no trainable
            floating-point parameter (a typo would otherwise leave the model deterministic).

    A conversion that makes nothing Bayesian without ``include`` (all parameters frozen,
    excluded, or in normalization layers) warns with a ``UserWarning`` and leaves the model as it is.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)))
        >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
        >>> loss = F.cross_entropy(model(x), y) + model.kl_divergence() / 1000
        >>> loss.backward()
    """

    def __init__(
        self,
        module: nn.Module,
        posterior: PosteriorSpec = GaussianPosterior,
        prior: PriorSpec = None,
        *,
        include: Filters = None,
        exclude: Filters = None,
        fallback: PosteriorSpec | None = None,
        **posterior_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"BayesianModule expects an nn.Module, got {type(module).__name__}.")
        if isinstance(module, BayesianModule) or is_bayesian(module):
            raise ValueError(
                f"{type(module).__name__} already holds posteriors; wrap the original model only once."
            )
        convert_(
            module,
            posterior,
            prior,
            include=include,
            exclude=exclude,
            fallback=fallback,
            posterior_kwargs=posterior_kwargs,
            caller="BayesianModule",
        )
        self.module = module
        # Whether `predict` could vmap the model, by training mode (True: training); filled on first use.
        self._vmap_works_by_mode: dict[bool, bool] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model with one weight sample per Bayesian tensor and return its output unchanged."""
        with _sampling.reuse_samples():
            return self.module(*args, **kwargs)

    def posteriors(self) -> Iterator[tuple[str, VariationalPosterior]]:
        """Yield ``(qualified_name, posterior)`` for each posterior, names relative to `module`."""
        return posteriors(self.module)

    def generate(
        self, *args: Any, weight_samples: generation.WeightSamples | str = "sequence", **kwargs: Any
    ) -> Tensor:
        """Generate with the wrapped model's ``generate`` (Hugging Face), holding each weight sample fixed per sequence.

        **Sampling rule.** With ``weight_samples="sequence"`` (the default) every generated
        sequence, each row of the batch and each of ``num_return_sequences``, gets its own
        weight sample, drawn once and used at every decoding step, so tied tensors (an embedding
        and its ``lm_head``) agree at every step; ``num_return_sequences=k`` is multi-sample
        generation: $k$ continuations under $k$ weight samples. The sequences are generated one
        at a time and returned as one tensor of token ids, right-padded with ``pad_token_id``.
        ``weight_samples="call"`` draws one sample for the whole call and runs one batched
        ``generate`` (faster; every sequence of the call shares the sample), returning what
        ``generate`` returns. Layers run with Flipout or the local reparameterization use plain
        weight samples here. Inside `frozen`, every sequence uses the posterior mean.

        Args:
            *args: The prompt ids (``inputs`` of ``generate``).
            weight_samples (WeightSamples | str): ``"sequence"`` or ``"call"``.
            **kwargs: Arguments of ``generate`` (``attention_mask``, ``max_new_tokens``, ``do_sample``...).

        Returns:
            Tensor: Token ids of shape ``[batch * num_return_sequences, length]``.

        Raises:
            AttributeError: If the wrapped model has no ``generate``.
            ValueError: If ``weight_samples`` is unknown, or ``return_dict_in_generate=True`` with
                ``weight_samples="sequence"``.
        """
        return generation.generate(self, *args, weight_samples=weight_samples, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Hugging Face and PEFT methods of the wrapped model (generation.PASSTHROUGH), so that the
        # Trainer and users can call them on the wrapper; a merge runs at the posterior mean.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in generation.PASSTHROUGH or "module" not in self._modules:
                raise
        value = getattr(self._modules["module"], name)
        if name in generation.MERGING:
            return _at_mean(self, value)
        if name in _CHECKPOINTING_SWITCHES:
            return _replaying_samples(value, _CHECKPOINTING_SWITCHES[name])
        return value

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_modules"] = {**state["_modules"], "module": _PicklableModel(self.module)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state["_modules"]["module"]
        if isinstance(snapshot, _PicklableModel):
            state["_modules"] = {**state["_modules"], "module": snapshot.restore()}
        super().__setstate__(state)


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Make every posterior in ``module`` return its mean inside the block, then restore each one's state.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(3, 1))
        >>> x = torch.randn(2, 3)
        >>> with bnn.frozen(model):
        ...     assert torch.equal(model(x), model(x))
    """
    states = [(posterior, posterior.frozen) for _, posterior in posteriors(module)]
    for posterior, _ in states:
        posterior.frozen = True
    try:
        yield module
    finally:
        for posterior, state in states:
            posterior.frozen = state


def _at_mean(model: nn.Module, method: Any) -> Any:
    def at_mean(*args: Any, **kwargs: Any) -> Any:
        with frozen(model):
            return method(*args, **kwargs)

    return at_mean


_CHECKPOINTING_SWITCHES = {
    "activation_checkpointing_enable": "activation_checkpointing_kwargs",
    "gradient_checkpointing_enable": "gradient_checkpointing_kwargs",
}


def _replaying_samples(enable: Any, keyword: str) -> Any:
    """Hugging Face's checkpointing switch ``enable``, checkpointing with `_sampling.replay_samples`.

    Unless the caller asks for re-entrant checkpointing (``use_reentrant=True``), the checkpoint
    runs non-re-entrant with ``context_fn=replay_samples``, so that its recomputation replays the
    forward's sampling scope; a ``context_fn`` of the caller's own is kept.
    """

    def enable_replaying(*args: Any, **kwargs: Any) -> Any:
        if keyword in kwargs:
            options = kwargs.pop(keyword)
        else:
            options, args = (args[0], args[1:]) if args else (None, args)
        options = dict(options or {})
        if not options.setdefault("use_reentrant", False):
            options.setdefault("context_fn", _sampling.replay_samples)
        return enable(options, *args, **kwargs)

    return enable_replaying


def convert_(
    model: nn.Module,
    posterior: PosteriorSpec,
    prior: PriorSpec,
    *,
    include: Filters,
    exclude: Filters,
    posterior_kwargs: dict[str, Any],
    caller: str,
    fallback: PosteriorSpec | None = None,
) -> list[VariationalPosterior]:
    """Register posteriors on the selected parameters of ``model``; nothing changes if building one fails.

    ``caller`` names the public entry point in the error or warning raised when nothing is selected.
    """
    include_patterns = as_patterns(include, "include")
    exclude_patterns = as_patterns(exclude, "exclude")
    planned: list[tuple[list[tuple[nn.Module, str]], VariationalPosterior]] = []
    for param, param_sites in parameter_sites(model).items():
        selected = selected_sites(param, param_sites, include_patterns, exclude_patterns)
        if not selected:
            continue
        qualified_name, _, owner, _ = selected[0]
        chosen = _supporting_posterior(posterior, fallback, param_sites)
        built = build_posterior(chosen, param, qualified_name, dict(posterior_kwargs))
        built.prior = resolve_prior(prior, param, qualified_name, owner)
        planned.append(([(site[2], site[3]) for site in param_sites], built))
    if not planned:
        check_selected_any(model, include, exclude, caller)
    for owner_sites, built in planned:
        for owner, tensor_name in owner_sites:
            attach(owner, tensor_name, built)
    return [built for _, built in planned]


def _supporting_posterior(
    posterior: PosteriorSpec, fallback: PosteriorSpec | None, param_sites: list[tuple[str, str, nn.Module, str]]
) -> PosteriorSpec:
    """Return ``posterior`` if it supports every site of the parameter, else ``fallback``."""
    if not isinstance(posterior, (type, VariationalPosterior)) or not hasattr(posterior, "check_module"):
        return posterior
    try:
        for _, _, owner, tensor_name in param_sites:
            posterior.check_module(owner, tensor_name)
    except TypeError as error:
        if fallback is None:
            raise TypeError(f"{param_sites[0][0]}: {error}") from error
        return fallback
    return posterior


class _PicklableModel:
    """A copy of a converted model with its parametrizations detached, so that it can be pickled."""

    def __init__(self, model: nn.Module) -> None:
        # Recurrent layers cache the latest weight samples (non-leaf tensors that cannot be copied).
        samples = {
            id(tensor): None
            for module in model.modules()
            for tensor in getattr(module, "_flat_weights", ())
            if isinstance(tensor, Tensor) and not tensor.is_leaf
        }
        self.model = copy.deepcopy(model, samples)
        self.sites: list[tuple[str, str, VariationalPosterior]] = []
        for qualified_name, _, tensor_name, posterior in list(sites(self.model)):
            module_name = qualified_name[: -len(tensor_name) - 1] if "." in qualified_name else ""
            self.sites.append((module_name, tensor_name, posterior))
        for _, owner in self.model.named_modules():
            if not parametrize.is_parametrized(owner):
                continue
            names = list(owner.parametrizations)
            owner.__class__ = parametrize.type_before_parametrizations(owner)
            del owner._modules["parametrizations"]
            for tensor_name in names:
                owner.register_parameter(tensor_name, nn.Parameter(torch.empty(0)))
        for module_name, tensor_name, posterior in self.sites:  # undo what registration did; `restore` redoes it
            posterior.on_remove(self.model.get_submodule(module_name), tensor_name)

    def restore(self) -> nn.Module:
        for module_name, tensor_name, posterior in self.sites:
            owner = self.model.get_submodule(module_name)
            if get_posterior(owner, tensor_name) is posterior:
                continue
            attach(owner, tensor_name, posterior)
        return self.model
