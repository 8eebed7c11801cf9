"""Monte Carlo dropout (Gal & Ghahramani, 2016): dropout kept stochastic at evaluation, the standard baseline."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["MCDropout", "enable_mc_dropout", "is_dropout"]

if TYPE_CHECKING:
    from typing_extensions import Self

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def is_dropout(module: nn.Module) -> bool:
    """Return whether ``module`` is a dropout layer: a torch ``nn.Dropout*`` or a class whose name ends in ``Dropout``.

    The name rule covers the dropout modules of other libraries, such as transformers'
    ``StableDropout`` (DeBERTa, SEW-D).

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> bnn.is_dropout(torch.nn.Dropout2d(0.1)), bnn.is_dropout(torch.nn.Linear(2, 2))
        (True, False)
    """
    return isinstance(module, _DROPOUT_TYPES) or type(module).__name__.endswith("Dropout")


def _is_attention(module: nn.Module) -> bool:
    # nn.MultiheadAttention and transformers' attention layers drop attention probabilities
    # functionally, with `training=self.training` of the attention module itself.
    return type(module).__name__.endswith("Attention")


def _switched(module: nn.Module) -> list[nn.Module]:
    # The modules whose `training` flag decides whether `module`'s forward drops anything. torch's
    # transformer encoder takes a fused inference path, which skips dropout, when its first layer
    # (for the encoder) or the layer itself is in evaluation mode.
    if isinstance(module, nn.TransformerEncoder):
        return list(module.layers)
    return [module]


class MCDropout:
    """Keep the dropout of a model stochastic in evaluation mode until `remove` is called; returned by `enable_mc_dropout`.

    Each selected module runs its forward in training mode and gets its own ``training`` flag back
    afterwards (also when the forward raises), so ``model.eval()`` and ``model.train()`` behave as
    usual, batch normalization keeps using its running statistics, and removing the handle gives
    exactly the plain evaluation-mode outputs again. It is a context manager: ``with
    bnn.enable_mc_dropout(model):`` removes it on exit. Handles nest.

    Attributes:
        module_names (list[str]): Qualified names of the modules kept stochastic.
    """

    def __init__(self, model: nn.Module, modules: list[tuple[str, nn.Module]]) -> None:
        self.module_names = [name for name, _ in modules]
        self._handles: list[RemovableHandle] = []
        for _, module in modules:
            saved: list[list[bool]] = []
            targets = _switched(module)
            self._handles.append(module.register_forward_pre_hook(_force_training(targets, saved)))
            # Prepended and always called: nested handles restore in reverse order, even on errors.
            self._handles.append(
                module.register_forward_hook(_restore(targets, saved), prepend=True, always_call=True)
            )
        self._model_name = type(model).__name__

    def remove(self) -> None:
        """Give the modules their usual behaviour back (deterministic in evaluation mode)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        """Whether the dropout is still kept stochastic (`remove` has not been called)."""
        return bool(self._handles)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"MCDropout({self._model_name}, {len(self.module_names)} modules, {state})"


def _force_training(targets: list[nn.Module], saved: list[list[bool]]) -> Any:
    def hook(module: nn.Module, _: Any) -> None:
        saved.append([target.training for target in targets])
        for target in targets:
            target.training = True

    return hook


def _restore(targets: list[nn.Module], saved: list[list[bool]]) -> Any:
    def hook(module: nn.Module, _: Any, output: Any) -> None:
        if saved:
            for target, flag in zip(targets, saved.pop(), strict=True):
                target.training = flag

    return hook


def enable_mc_dropout(model: nn.Module, *, attention: bool = True) -> MCDropout:
    """Keep every dropout layer of ``model`` stochastic in evaluation mode (Monte Carlo dropout).

    MC dropout (Gal & Ghahramani, 2016, "Dropout as a Bayesian Approximation") is the standard
    baseline for Bayesian neural networks: train a network with dropout as usual, then average
    the predictions of several forward passes with dropout still active. With the layers kept
    stochastic, `predict` draws ``num_samples`` dropout masks (vectorised with ``torch.func.vmap``
    when the model allows it) and the uncertainty measures (`entropy`, `epistemic_uncertainty`...)
    apply to the stacked outputs unchanged.

    Selected modules: every `is_dropout` module (``nn.Dropout``, ``Dropout1d/2d/3d``,
    ``AlphaDropout``, ``FeatureAlphaDropout`` and classes named ``...Dropout``) and, with
    ``attention=True``, attention layers (``nn.MultiheadAttention`` and classes named
    ``...Attention``, such as transformers' ``BertSelfAttention`` or ``LlamaAttention``), which
    apply their attention-probability dropout only when they are in training mode. Only the
    selected modules' own ``training`` flags change, and only during their forward; the model's
    other layers (batch normalization, for one) stay in evaluation mode. ``nn.TransformerEncoder``
    and ``nn.TransformerEncoderLayer`` are also switched during their forward, since in evaluation
    mode they take a fused inference path that skips dropout.

    Args:
        model (nn.Module): The model, usually in evaluation mode (``model.eval()``).
        attention (bool): Also keep the attention-probability dropout of attention layers.

    Returns:
        MCDropout: A handle; call ``remove()`` or use it as a context manager to switch back.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no dropout layer (MC dropout would return identical samples).

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        ...                           torch.nn.Linear(16, 3)).eval()
        >>> x = torch.randn(5, 4)
        >>> with torch.no_grad(), bnn.enable_mc_dropout(net):
        ...     logits = bnn.predict(net, x, num_samples=8)
        >>> logits.shape, bool((logits[0] != logits[1]).any())
        (torch.Size([8, 5, 3]), True)
        >>> bnn.epistemic_uncertainty(logits, from_logits=True).shape
        torch.Size([5])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"enable_mc_dropout: model must be an nn.Module, got {type(model).__name__}.")
    modules = [
        (name, module) for name, module in model.named_modules()
        if is_dropout(module) or (attention and _is_attention(module))
        or isinstance(module, (nn.TransformerEncoder, nn.TransformerEncoderLayer))
    ]
    if not any(is_dropout(module) for _, module in modules) and not any(
        _has_attention_dropout(module) for _, module in modules
    ):
        raise ValueError(
            f"enable_mc_dropout: {type(model).__name__} has no dropout layer (no nn.Dropout*, no module "
            "named ...Dropout, no attention layer with dropout), so every Monte Carlo sample would be the same.\n"
            "Add dropout to the model and train it, or make it Bayesian with bnn.BayesianModule."
        )
    return MCDropout(model, modules)


def _has_attention_dropout(module: nn.Module) -> bool:
    if not _is_attention(module):
        return False
    rates = [getattr(module, name, None) for name in ("dropout", "attention_dropout")]
    return any(isinstance(rate, float) and rate > 0 for rate in rates) or any(
        isinstance(child, _DROPOUT_TYPES) and child.p > 0 for child in module.children()
    )
