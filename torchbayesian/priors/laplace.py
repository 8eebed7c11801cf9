"""Laplace prior."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Laplace

from torchbayesian.priors.base import Prior, as_buffer

__all__ = ["LaplacePrior"]


class LaplacePrior(Prior):
    """Laplace prior $p(w) = \\frac{1}{2b} \\exp(-|w - \\mathrm{loc}| / b)$ with $b = \\mathrm{scale}$, element-wise.

    A sparsity-inducing prior (the Bayesian counterpart of L1 regularisation). Against a Gaussian
    posterior its KL divergence has a closed form (registered in ``torch.distributions``).

    Args:
        loc (float | Tensor): Location; a scalar or a tensor broadcastable to the weight's shape.
        scale (float | Tensor): Scale $b$, positive and finite.

    Raises:
        TypeError: If an argument is not a float or a floating-point tensor.
        ValueError: If an argument is not finite or ``scale`` is not positive.

    Example:
        >>> from torchbayesian import bnn
        >>> bnn.LaplacePrior(0.0, 0.5).distribution.stddev
        tensor(0.7071)
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        self.register_buffer("loc", as_buffer(loc, "loc", "LaplacePrior"))
        self.register_buffer("scale", as_buffer(scale, "scale", "LaplacePrior", positive=True))

    @property
    def distribution(self) -> Laplace:
        """``Laplace(loc, scale)``."""
        return Laplace(self.loc, self.scale, validate_args=False)

    def extra_repr(self) -> str:
        if self.loc.dim() or self.scale.dim():
            return f"loc=<tensor {tuple(self.loc.shape)}>, scale=<tensor {tuple(self.scale.shape)}>"
        return f"loc={self.loc.item():g}, scale={self.scale.item():g}"
