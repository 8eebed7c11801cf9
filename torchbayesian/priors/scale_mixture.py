"""Scale mixture of two zero-mean Gaussians (Blundell et al., 2015)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, Normal

from torchbayesian.priors.base import Prior, as_buffer

__all__ = ["ScaleMixturePrior"]


class ScaleMixturePrior(Prior):
    """Scale-mixture prior $p(w) = \\pi\\,\\mathcal{N}(0, \\sigma_1^2) + (1 - \\pi)\\,\\mathcal{N}(0, \\sigma_2^2)$, element-wise.

    The prior of "Weight Uncertainty in Neural Networks" (Blundell et al., 2015): a wide component
    ($\\sigma_1$) and a narrow one ($\\sigma_2$) that pulls many weights towards zero. It has no
    closed-form KL divergence against a Gaussian posterior, so `kl_divergence` estimates it by
    Monte Carlo.

    Args:
        pi (float | Tensor): Weight of the first component, in ``[0, 1]``.
        sigma1 (float | Tensor): Standard deviation of the first component, positive.
        sigma2 (float | Tensor): Standard deviation of the second component, positive.

    Raises:
        TypeError: If an argument is not a float or a floating-point tensor.
        ValueError: If ``pi`` is outside ``[0, 1]`` or a scale is not finite and positive.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> prior = bnn.ScaleMixturePrior(0.5, 1.0, 0.0025)
        >>> prior.log_prob(torch.zeros(3)).item() > 0
        True
    """

    pi: Tensor
    sigma1: Tensor
    sigma2: Tensor

    def __init__(self, pi: float | Tensor = 0.5, sigma1: float | Tensor = 1.0, sigma2: float | Tensor = 0.0025) -> None:
        super().__init__()
        pi_tensor = as_buffer(pi, "pi", "ScaleMixturePrior")
        if pi_tensor.device.type != "meta" and not ((pi_tensor >= 0) & (pi_tensor <= 1)).all():
            raise ValueError(f"ScaleMixturePrior: pi must lie in [0, 1], got {pi!r}.")
        self.register_buffer("pi", pi_tensor)
        self.register_buffer("sigma1", as_buffer(sigma1, "sigma1", "ScaleMixturePrior", positive=True))
        self.register_buffer("sigma2", as_buffer(sigma2, "sigma2", "ScaleMixturePrior", positive=True))

    @property
    def distribution(self) -> MixtureSameFamily:
        """``MixtureSameFamily`` of two zero-mean ``Normal`` components."""
        pi, sigma1, sigma2 = torch.broadcast_tensors(self.pi, self.sigma1, self.sigma2)
        weights = torch.stack([pi, 1 - pi], dim=-1)
        scales = torch.stack([sigma1, sigma2], dim=-1)
        components = Normal(torch.zeros_like(scales), scales, validate_args=False)
        return MixtureSameFamily(Categorical(logits=weights.log(), validate_args=False), components, validate_args=False)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={_short(getattr(self, name))}" for name in ("pi", "sigma1", "sigma2"))


def _short(tensor: Tensor) -> str:
    return f"{tensor.item():g}" if tensor.numel() == 1 else f"<tensor {tuple(tensor.shape)}>"
