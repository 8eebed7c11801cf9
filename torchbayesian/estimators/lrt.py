"""Local reparameterization: sample pre-activations instead of weights."""

from __future__ import annotations

from torch import Tensor

from torchbayesian._native import ops
from torchbayesian.estimators.base import EstimatorPosterior, channel_view
from torchbayesian.estimators.registry import LayerOp

__all__ = ["LocalReparameterizationPosterior"]


class LocalReparameterizationPosterior(EstimatorPosterior):
    """Gaussian posterior whose layer samples its output instead of its weight (Kingma et al., 2015).

    For a factorised Gaussian weight each output of an affine layer is Gaussian, so it is sampled
    directly, with independent noise per output element:

    $$y = f(x; \\mu_W, \\mu_b) + \\sqrt{f(x^2; \\sigma_W^2, \\sigma_b^2)} \\odot \\epsilon,$$

    where $f$ is the layer's affine map (a deterministic bias adds no variance). Every example,
    position and channel gets its own noise: the marginals match plain weight sampling but the
    correlations between outputs that share a weight are dropped (the estimator is exact for one
    output element and approximate for a layer whose outputs reuse the same weights, such as a
    convolution's spatial positions). Gradient variance falls roughly as ``1 / batch_size`` at
    the cost of a second layer evaluation.

    Arguments, supported layers and errors are those of `EstimatorPosterior`.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> layer = torch.nn.Conv2d(3, 4, 3, padding="same")
        >>> _ = bnn.register_posterior(layer, "weight", bnn.LocalReparameterizationPosterior)
        >>> layer(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    @classmethod
    def estimate(
        cls,
        op: LayerOp,
        input: Tensor,
        mean: Tensor,
        weight: EstimatorPosterior | None,
        bias: EstimatorPosterior | None,
    ) -> Tensor:
        """Return ``f(x; mu) + sqrt(f(x**2; sigma**2)) * eps`` from ``mean = f(x; mu)``; see the class docstring."""
        bias_variance = None if bias is None else bias.variance()
        if weight is None:
            variance = channel_view(bias_variance, op.channel_dim)
        else:
            variance = op.noise(input.square(), weight.variance(), bias_variance)
        if variance.shape != mean.shape:
            variance = variance.expand_as(mean)
        return ops.local_reparameterization(mean, variance, ops.draw_seed())[0]
