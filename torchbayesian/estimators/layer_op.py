"""`LayerOp`: one layer call's affine map with the weight and bias left open."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["LayerOp"]


@dataclass(frozen=True)
class LayerOp:
    """The affine map of one layer call, with the weight and bias left open.

    Flipout and local reparameterization evaluate the layer's map several times per call, on the
    input and on transforms of it (``input * signs``, ``input ** 2``), with other weights. A
    `Kernel` binds everything else (stride, padding, output size, ...) into `apply`.

    Args:
        apply (Callable[[Tensor, Tensor, Tensor | None], Tensor]): ``apply(input, weight, bias)``,
            linear in ``weight`` and ``bias``; ``bias`` may be ``None``.
        channel_dim (int): Negative index of the channel (feature) dimension of both the input and
            the output, counted from the end (``-1`` for `nn.Linear`, ``-3`` for `nn.Conv2d`).
            Leading dimensions before it are batch dimensions.
        apply_noise (Callable[[Tensor, Tensor, Tensor | None], Tensor] | None): The same map for
            the estimators' second evaluation (the perturbation or the variance), when a faster
            implementation exists for it; ``None`` uses ``apply``.
    """

    apply: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    channel_dim: int
    apply_noise: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None

    def noise(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Evaluate the map for the noise path: ``apply_noise`` if given, else ``apply``."""
        return (self.apply_noise or self.apply)(input, weight, bias)
