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


def _scalar_gaussian_prior(prior: object) -> tuple[float, float] | None:
    """Return ``(loc, scale)`` of a `GaussianPrior` with scalar, fixed (no-gradient) parameters, else ``None``."""
    if not isinstance(prior, GaussianPrior) or type(prior).distribution is not GaussianPrior.distribution:
        return None
    loc, scale = prior.loc, prior.scale
    versions = loc._version, scale._version
    # Cached on the prior while its buffers are the same tensors, unmodified (in-place changes bump versions).
    cached = prior.__dict__.get("_scalar_parameters")
    if cached is not None and cached[0] is loc and cached[1] is scale and cached[2] == versions:
        return cached[3]
    value = None
    if loc.numel() == 1 and scale.numel() == 1 and not (loc.requires_grad or scale.requires_grad):
        value = float(loc), float(scale)
    prior.__dict__["_scalar_parameters"] = (loc, scale, versions, value)
    return value
