"""Laplace prior."""

from __future__ import annotations

from torch.distributions import Laplace

from torchbayesian.priors.base import _LocationScalePrior

__all__ = ["LaplacePrior"]


class LaplacePrior(_LocationScalePrior):
    """Laplace prior $p(w) = \\frac{1}{2b} \\exp(-|w - \\mathrm{loc}| / b)$ with $b = \\mathrm{scale}$, element-wise.

    A sparsity-inducing prior (the Bayesian counterpart of L1 regularisation). Against a Gaussian
    posterior its KL divergence has a closed form (registered in ``torch.distributions``).

    Args:
        loc (float | Tensor): Location; a scalar or a tensor broadcastable to the weight's shape.
        scale (float | Tensor): Scale $b$, positive and finite.

    Raises:
        TypeError: If an argument is not a float or a floating-point tensor.
        ValueError: If an argument is not finite, ``scale`` is not positive, or the shapes of
            ``loc`` and ``scale`` do not broadcast.

    Example:
        >>> from torchbayesian import bnn
        >>> bnn.LaplacePrior(0.0, 0.5).distribution.stddev
        tensor(0.7071)
    """

    @property
    def distribution(self) -> Laplace:
        """``Laplace(loc, scale)``."""
        return Laplace(self.loc, self.scale, validate_args=False)
