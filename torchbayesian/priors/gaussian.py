"""Gaussian prior."""

from __future__ import annotations

from torch.distributions import Normal

from torchbayesian.priors.base import _LocationScalePrior

__all__ = ["GaussianPrior"]


class GaussianPrior(_LocationScalePrior):
    """Gaussian prior $p(w) = \\mathcal{N}(\\mathrm{loc}, \\mathrm{scale}^2)$, element-wise.

    Args:
        loc (float | Tensor): Mean; a scalar or a tensor broadcastable to the weight's shape.
        scale (float | Tensor): Standard deviation, positive and finite.

    Raises:
        TypeError: If an argument is not a float or a floating-point tensor.
        ValueError: If an argument is not finite, ``scale`` is not positive, or the shapes of
            ``loc`` and ``scale`` do not broadcast.

    Example:
        >>> from torchbayesian import bnn
        >>> bnn.GaussianPrior(0.0, 0.1).distribution.stddev
        tensor(0.1000)
    """

    @property
    def distribution(self) -> Normal:
        """``Normal(loc, scale)``."""
        return Normal(self.loc, self.scale, validate_args=False)
