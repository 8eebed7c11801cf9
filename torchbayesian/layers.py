"""Drop-in Bayesian layers: the torch layers with a posterior on every parameter."""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from torchbayesian import _sampling
from torchbayesian.mixin import BayesianMixin
from torchbayesian.module import convert_
from torchbayesian.posteriors.gaussian import GaussianPosterior, Init
from torchbayesian.priors.base import Prior
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.priors.scale_mixture import ScaleMixturePrior

__all__ = [
    "GRU",
    "LSTM",
    "BayesianLayer",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "DeConv1d",
    "DeConv2d",
    "DeConv3d",
    "Embedding",
    "Linear",
    "ModuleList",
    "Sequential",
]


class BayesianLayer(BayesianMixin):
    """Make a torch layer Bayesian: build it, then register a `GaussianPosterior` on each of its parameters.

    Mix it in **before** the torch layer (``class Linear(BayesianLayer, nn.Linear)``). The
    constructor takes the torch layer's own arguments unchanged, plus the keyword-only arguments
    below (named as in Blitz, Esposito 2020). The torch layer's ``forward`` is used as is, wrapped
    in `reuse_samples` so that each weight is sampled once per call (a recurrent layer reads its
    weights at every time step). Every layer has the `BayesianMixin` methods (`kl_divergence`,
    `log_prior`, `log_variational_posterior`, `sample_elbo`, `freeze`).

    A parametrized layer cannot be pickled whole with ``torch.save(layer)`` (a `torch.nn.utils.parametrize`
    restriction): save and load its ``state_dict`` instead.

    Args:
        *args: The torch layer's positional arguments.
        prior_sigma_1 (float): Standard deviation of the wide component of the `ScaleMixturePrior`.
        prior_sigma_2 (float): Standard deviation of the narrow component.
        prior_pi (float): Weight of the wide component, in ``[0, 1]``; with ``1`` (or ``0``) the
            prior is the `GaussianPrior` of the remaining component, whose KL has a closed form.
        prior_dist (Prior | Distribution | None): Any prior (a `Prior` or a ``torch.distributions``
            distribution, broadcast to each tensor's shape); replaces the scale mixture.
        posterior_mu_init (float | Tensor | Callable | None): Initial posterior mean; ``None``
            keeps the torch layer's own initialisation.
        posterior_rho_init (float | Tensor | Callable | None): Initial unconstrained posterior
            scale ($\\sigma = \\mathrm{softplus}(\\rho)$); ``None`` gives $\\sigma = 0.01$.
        freeze (bool): Start frozen: the layer uses the posterior means (call `unfreeze` to sample).
        **kwargs: The torch layer's keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        prior_sigma_1: float = 1.0,
        prior_sigma_2: float = 0.0025,
        prior_pi: float = 0.5,
        prior_dist: Prior | Distribution | None = None,
        posterior_mu_init: Init | None = None,
        posterior_rho_init: Init | None = None,
        freeze: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        module = self._as_module()
        prior = prior_dist if prior_dist is not None else _scale_mixture(prior_pi, prior_sigma_1, prior_sigma_2)
        posterior_kwargs: dict[str, Any] = {}
        if posterior_mu_init is not None:
            posterior_kwargs["mu_init"] = posterior_mu_init
        if posterior_rho_init is not None:
            posterior_kwargs["rho_init"] = posterior_rho_init
        convert_(module, GaussianPosterior, prior, include=None, exclude=None, posterior_kwargs=posterior_kwargs)
        if freeze:
            self.freeze()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the torch layer's forward with one weight sample per parameter."""
        with _sampling.reuse_samples():
            return super().forward(*args, **kwargs)  # type: ignore[misc]


def _scale_mixture(pi: float, sigma1: float, sigma2: float) -> Prior:
    if pi == 1:
        return GaussianPrior(0.0, sigma1)
    if pi == 0:
        return GaussianPrior(0.0, sigma2)
    return ScaleMixturePrior(pi, sigma1, sigma2)


class Linear(BayesianLayer, nn.Linear):
    """Bayesian `torch.nn.Linear`; takes its arguments plus those of `BayesianLayer`.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> layer = bnn.Linear(4, 2, prior_sigma_1=0.1, prior_pi=1.0)
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """


class Conv1d(BayesianLayer, nn.Conv1d):
    """Bayesian `torch.nn.Conv1d`; takes its arguments plus those of `BayesianLayer`."""


class Conv2d(BayesianLayer, nn.Conv2d):
    """Bayesian `torch.nn.Conv2d`; takes its arguments plus those of `BayesianLayer`."""


class Conv3d(BayesianLayer, nn.Conv3d):
    """Bayesian `torch.nn.Conv3d`; takes its arguments plus those of `BayesianLayer`."""


class ConvTranspose1d(BayesianLayer, nn.ConvTranspose1d):
    """Bayesian `torch.nn.ConvTranspose1d` (also `DeConv1d`); takes its arguments plus those of `BayesianLayer`."""


class ConvTranspose2d(BayesianLayer, nn.ConvTranspose2d):
    """Bayesian `torch.nn.ConvTranspose2d` (also `DeConv2d`); takes its arguments plus those of `BayesianLayer`."""


class ConvTranspose3d(BayesianLayer, nn.ConvTranspose3d):
    """Bayesian `torch.nn.ConvTranspose3d` (also `DeConv3d`); takes its arguments plus those of `BayesianLayer`."""


DeConv1d = ConvTranspose1d
DeConv2d = ConvTranspose2d
DeConv3d = ConvTranspose3d


class _RecurrentLayer(BayesianLayer):
    """Let recurrent layers be deep-copied although they cache the latest weight samples."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _RecurrentLayer:
        for weight in self.__dict__.get("_flat_weights", ()):
            if isinstance(weight, Tensor) and not weight.is_leaf:
                memo[id(weight)] = weight.detach().clone()
        replica = self.__new__(type(self))
        memo[id(self)] = replica
        replica.__dict__ = copy.deepcopy(self.__dict__, memo)
        return replica


class LSTM(_RecurrentLayer, nn.LSTM):
    """Bayesian `torch.nn.LSTM`; takes its arguments plus those of `BayesianLayer`.

    Each weight is sampled once per call and shared by all time steps.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> lstm = bnn.LSTM(3, 5, num_layers=2, batch_first=True)
        >>> output, (h, c) = lstm(torch.randn(2, 7, 3))
        >>> output.shape
        torch.Size([2, 7, 5])
    """


class GRU(_RecurrentLayer, nn.GRU):
    """Bayesian `torch.nn.GRU`; takes its arguments plus those of `BayesianLayer`."""


class Embedding(BayesianLayer, nn.Embedding):
    """Bayesian `torch.nn.Embedding`; takes its arguments plus those of `BayesianLayer`.

    Note:
        With ``padding_idx``, the padding row's posterior mean starts at zero and receives no
        gradient from the data term, but sampled rows are noisy like every other row.
    """


class Sequential(BayesianMixin, nn.Sequential):
    """`torch.nn.Sequential` with the `BayesianMixin` methods; each weight is sampled once per call.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.Sequential(bnn.Linear(4, 8), torch.nn.ReLU(), bnn.Linear(8, 1))
        >>> loss = model(torch.randn(5, 4)).pow(2).mean() + model.kl_divergence() / 100
        >>> loss.backward()
    """

    def forward(self, input: Any) -> Any:
        """Run the layers in order with one weight sample per Bayesian tensor."""
        with _sampling.reuse_samples():
            return super().forward(input)


class ModuleList(BayesianMixin, nn.ModuleList):
    """`torch.nn.ModuleList` with the `BayesianMixin` methods (`kl_divergence` sums over all entries).

    Example:
        >>> from torchbayesian import bnn
        >>> layers = bnn.ModuleList([bnn.Linear(2, 2), bnn.Linear(2, 1)])
        >>> len(list(layers.posteriors()))
        4
    """


