"""The registry of layer kernels: how each layer type applies its affine map to a given weight and bias."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from torch import nn
from torch.nn.utils import parametrize

from torchbayesian.estimators.layer_op import LayerOp

__all__ = ["Kernel", "LayerOp", "find_kernel", "register_estimator", "registered_base", "supported_layers"]


Kernel = Callable[..., LayerOp]
"""``kernel(layer, input, *args, **kwargs) -> LayerOp``, called with the layer's forward arguments."""

_K = TypeVar("_K", bound=Kernel)
_KERNELS: dict[type[nn.Module], Kernel] = {}
_OPTIONAL_LAYERS = {"transformers.pytorch_utils": "Conv1D"}


def register_estimator(layer_type: type[nn.Module]) -> Callable[[_K], _K]:
    """Register the kernel that lets Flipout and local reparameterization run ``layer_type``.

    The kernel receives the layer and the arguments of its ``forward`` call and returns a
    `LayerOp`. Dispatch walks the layer's MRO, so a kernel also serves subclasses, unless a
    subclass overrides ``forward`` (its own computation could differ): such a subclass needs its
    own kernel.

    Args:
        layer_type (type[nn.Module]): The layer class the kernel handles.

    Returns:
        Callable: A decorator that registers the kernel and returns it unchanged.

    Raises:
        TypeError: If ``layer_type`` is not an ``nn.Module`` subclass.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torchbayesian import bnn
        >>> class Scaled(torch.nn.Linear):
        ...     def forward(self, input):
        ...         return 2 * F.linear(input, self.weight, self.bias)
        >>> @bnn.register_estimator(Scaled)
        ... def _scaled(layer, input):
        ...     return bnn.LayerOp(lambda x, w, b: 2 * F.linear(x, w, b), channel_dim=-1)
        >>> model = bnn.BayesianModule(Scaled(3, 2), bnn.FlipoutPosterior)
        >>> model(torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_estimator expects an nn.Module subclass, got {layer_type!r}.")

    def decorator(kernel: _K) -> _K:
        _KERNELS[layer_type] = kernel
        return kernel

    return decorator


def find_kernel(module: nn.Module) -> Kernel | None:
    """Return the kernel of the nearest registered class in the MRO of ``module``'s type, if any.

    ``None`` also when ``module``'s class overrides the ``forward`` of that registered class.
    """
    cls = parametrize.type_before_parametrizations(module)
    base = registered_base(cls)
    if base is None or cls.forward is not base.forward:
        return None
    return _KERNELS[base]


def registered_base(cls: type[nn.Module]) -> type[nn.Module] | None:
    """Return the nearest class in the MRO of ``cls`` that has a kernel, if any."""
    _register_optional_layers()
    return next((base for base in cls.__mro__ if base in _KERNELS), None)


def supported_layers() -> list[str]:
    """Return the names of the layer classes with a kernel, for error messages."""
    _register_optional_layers()
    names = {
        f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn.") else f"{cls.__module__}.{cls.__qualname__}"
        for cls in _KERNELS
    }
    names.update(f"{module}.{name}" for module, name in _OPTIONAL_LAYERS.items())
    return sorted(names)


def _register_optional_layers() -> None:
    # Layers of optional libraries are registered once the library is imported: a model holding
    # one has imported it, and torchbayesian never imports it itself.
    if "transformers.pytorch_utils" in sys.modules:
        from torchbayesian.estimators._transformers import KERNELS

        for layer_type, kernel in KERNELS.items():
            _KERNELS.setdefault(layer_type, kernel)
