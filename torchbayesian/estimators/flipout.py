"""Flipout: pseudo-independent weight perturbations for every example of a mini-batch."""

from __future__ import annotations

import torch
from torch import Tensor

from torchbayesian.estimators.base import EstimatorPosterior, channel_view, rademacher, rademacher_pair
from torchbayesian.estimators.registry import LayerOp

__all__ = ["FlipoutPosterior"]


class FlipoutPosterior(EstimatorPosterior):
    """Gaussian posterior whose layer is run with Flipout (Wen et al., 2018).

    One perturbation $\\Delta W = \\sigma \\odot \\epsilon$ is drawn per forward pass and decorrelated
    across examples by random signs:

    $$y = f(x; \\mu_W, \\mu_b) + f(x \\odot s; \\Delta W, \\Delta b) \\odot r,$$

    where $f$ is the layer's affine map, and $s$ (input channels) and $r$ (output channels) are
    Rademacher signs drawn **per example and channel** and shared across spatial and sequence
    positions (shapes ``[batch, 1, ..., channels]`` for `nn.Linear` inputs with extra leading
    dimensions, ``[batch, channels, 1, ...]`` for convolutions). The bias is treated as the weight
    of a constant input: its noise $\\Delta b = \\sigma_b \\odot \\epsilon_b$, also drawn once per
    forward, is flipped by $r$ with the weight's. Each example's output has exactly the
    distribution it has under plain weight sampling, while different examples see nearly
    independent weights, which divides the gradient variance by up to the batch size at twice the
    cost of a layer.

    Arguments, supported layers and errors are those of `EstimatorPosterior`.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> model = bnn.BayesianModule(net, bnn.FlipoutPosterior, sigma_init=0.1)
        >>> x = torch.randn(1, 4).expand(2, 4)
        >>> out = model(x)
        >>> bool((out[0] != out[1]).any())  # one forward, two identical inputs, two weight draws
        True
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
        """Return ``f(x; mu) + f(x * s; dW, db) * r`` from ``mean = f(x; mu)``; see the class docstring."""
        bias_noise = None if bias is None else bias.perturbation()
        if weight is None:
            return mean + channel_view(bias_noise, op.channel_dim) * rademacher(mean, op.channel_dim)
        input_signs, output_signs = rademacher_pair(input, mean, op.channel_dim)
        perturbed = op.noise(input * input_signs, weight.perturbation(), bias_noise)
        return torch.addcmul(mean, perturbed, output_signs)
