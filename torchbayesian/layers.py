"""Drop-in Bayesian layers: the torch layers with a posterior on every parameter."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn.utils.rnn import PackedSequence

from torchbayesian import _sampling
from torchbayesian.mixin import BayesianMixin
from torchbayesian.module import convert_, frozen
from torchbayesian.posteriors.gaussian import GaussianPosterior, Init
from torchbayesian.priors.base import Prior
from torchbayesian.priors.gaussian import GaussianPrior
from torchbayesian.priors.scale_mixture import ScaleMixturePrior
from torchbayesian.registration import sites

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
    `log_prior`, `log_variational_posterior`, `sample_elbo`, `freeze`) and Blitz's per-layer
    methods `forward_frozen`, `sample_weights` and `frozen_weights` (Blitz's ``get_frozen_weights``).

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
            scale ($\\sigma = \\mathrm{softplus}(\\rho)$); ``None`` gives $\\sigma = 0.001$.
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
        convert_(module, GaussianPosterior, prior, include=None, exclude=None, posterior_kwargs=posterior_kwargs,
                 caller=type(self).__name__)
        if freeze:
            self.freeze()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the torch layer's forward with one weight sample per parameter."""
        with _sampling.reuse_samples():
            return super().forward(*args, **kwargs)  # type: ignore[misc]

    def forward_frozen(self, *args: Any, **kwargs: Any) -> Any:
        """Run the forward with every weight at its posterior mean, whether or not the layer is frozen.

        Example:
            >>> import torch
            >>> from torchbayesian import bnn
            >>> layer = bnn.Linear(3, 2)
            >>> x = torch.randn(4, 3)
            >>> means = layer.frozen_weights()
            >>> torch.allclose(layer.forward_frozen(x), x @ means["weight"].T + means["bias"])
            True
        """
        with frozen(self._as_module()):
            return self(*args, **kwargs)

    def sample_weights(self) -> dict[str, Tensor]:
        """Draw one sample of every Bayesian tensor of the layer (even when frozen), keyed by name.

        The samples are differentiable in the variational parameters; a tensor registered under
        several names gets one sample. They do not change what the next forward draws, nor the
        weights `log_prior` and `log_variational_posterior` are evaluated at (those of the latest forward).

        Example:
            >>> import torch
            >>> from torchbayesian import bnn
            >>> lstm = bnn.LSTM(3, 4)
            >>> weights = lstm.sample_weights()
            >>> sorted(weights), tuple(weights["weight_hh_l0"].shape)
            (['bias_hh_l0', 'bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0'], (16, 4))
        """
        drawn: dict[int, Tensor] = {}
        weights = {}
        for name, _, _, posterior in sites(self._as_module()):
            if id(posterior) not in drawn:
                drawn[id(posterior)] = posterior.sample_parameters()
            weights[name] = drawn[id(posterior)]
        return weights

    def frozen_weights(self) -> dict[str, Tensor]:
        """Return the posterior mean of every Bayesian tensor of the layer, keyed by name (used by `forward_frozen`)."""
        return {name: posterior.mean for name, _, _, posterior in sites(self._as_module())}


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


class _PeepholeLSTM(nn.LSTM):
    """``nn.LSTM`` whose forward runs Blitz's peephole cell when ``peephole`` is set (see `LSTM`)."""

    peephole: bool = False

    def forward(self, input: Tensor | PackedSequence, hx: tuple[Tensor, Tensor] | None = None) -> Any:
        """Run the LSTM (the peephole cell when ``peephole=True``)."""
        if not self.peephole:
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            raise NotImplementedError("LSTM: peephole=True does not take a PackedSequence; pad the batch instead.")
        return _peephole_lstm(self, input, hx)


class LSTM(_RecurrentLayer, _PeepholeLSTM):
    """Bayesian `torch.nn.LSTM`; takes its arguments plus those of `BayesianLayer`, and ``peephole``.

    Each weight is sampled once per call and shared by all time steps.

    With ``peephole=True`` the cell follows Blitz's peephole ``BayesianLSTM``: the gates read the
    previous **cell** state instead of the hidden state, and the cell input is a sigmoid of the
    input alone. With $W$/$U$ the ``weight_ih``/``weight_hh`` blocks of the input ($i$), forget
    ($f$), cell ($g$) and output ($o$) gates and $b = b_{ih} + b_{hh}$:

    $$
    \\begin{aligned}
    i_t, f_t, o_t &= \\sigma(W_{i,f,o} x_t + U_{i,f,o} c_{t-1} + b_{i,f,o}), \\\\
    g_t &= \\sigma(W_g x_t + b_g), \\\\
    c_t &= f_t \\odot c_{t-1} + i_t \\odot g_t, \\\\
    h_t &= \\tanh(o_t \\odot c_t).
    \\end{aligned}
    $$

    ``num_layers``, ``bidirectional``, ``batch_first``, ``dropout`` and unbatched inputs work as in
    ``nn.LSTM``, with the same output shapes; the recurrence runs as a Python loop over time steps
    (no cuDNN kernel). The initial hidden state in ``hx`` is accepted for compatibility but, as in
    Blitz, only the initial cell state enters the recurrence.

    Args:
        peephole (bool): Use the peephole cell above (keyword-only); not with ``proj_size`` or packed sequences.

    Raises:
        ValueError: If ``peephole=True`` is combined with ``proj_size > 0``.
        NotImplementedError: If a peephole LSTM is called on a ``PackedSequence``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> lstm = bnn.LSTM(3, 5, num_layers=2, batch_first=True)
        >>> output, (h, c) = lstm(torch.randn(2, 7, 3))
        >>> output.shape
        torch.Size([2, 7, 5])
        >>> peephole = bnn.LSTM(3, 5, batch_first=True, peephole=True)
        >>> peephole(torch.randn(2, 7, 3))[0].shape
        torch.Size([2, 7, 5])
    """

    def __init__(self, *args: Any, peephole: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if peephole and self.proj_size > 0:
            raise ValueError(
                f"LSTM: peephole=True does not support proj_size > 0 (got proj_size={self.proj_size}); "
                "the peephole gates read the cell state, whose width is hidden_size."
            )
        self.peephole = peephole

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, peephole=True" if self.peephole else super().extra_repr()


def _peephole_lstm(lstm: nn.LSTM, input: Tensor, hx: tuple[Tensor, Tensor] | None) -> Any:
    batched = input.dim() == 3
    sequence = input if batched and not lstm.batch_first else input.transpose(0, 1) if batched else input[:, None]
    directions = 2 if lstm.bidirectional else 1
    if hx is None:
        zeros = sequence.new_zeros(lstm.num_layers * directions, sequence.shape[1], lstm.hidden_size)
        hx = (zeros, zeros)
    elif not batched:
        hx = (hx[0][:, None], hx[1][:, None])
    last_h, last_c = [], []
    for layer in range(lstm.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"l{layer}_reverse" if direction else f"l{layer}"
            bias = getattr(lstm, f"bias_ih_{suffix}") + getattr(lstm, f"bias_hh_{suffix}") if lstm.bias else None
            index = layer * directions + direction
            output, h, c = _peephole_direction(
                sequence, hx[1][index], getattr(lstm, f"weight_ih_{suffix}"), getattr(lstm, f"weight_hh_{suffix}"),
                bias, reverse=bool(direction),
            )
            outputs.append(output)
            last_h.append(h)
            last_c.append(c)
        sequence = torch.cat(outputs, dim=-1)
        if lstm.dropout and lstm.training and layer < lstm.num_layers - 1:
            sequence = F.dropout(sequence, lstm.dropout, training=True)
    h_n, c_n = torch.stack(last_h), torch.stack(last_c)
    if not batched:
        return sequence[:, 0], (h_n[:, 0], c_n[:, 0])
    return (sequence.transpose(0, 1) if lstm.batch_first else sequence), (h_n, c_n)


def _peephole_direction(sequence: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias: Tensor | None,
                        *, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    # sequence: [T, B, F]. The hidden state h never feeds back: the gates read the cell state c.
    inputs = F.linear(sequence, weight_ih, bias)
    steps = range(len(sequence) - 1, -1, -1) if reverse else range(len(sequence))
    outputs: list[Tensor] = [sequence.new_empty(0)] * len(sequence)
    h = c
    for t in steps:
        in_gate, forget_gate, _, out_gate = (inputs[t] + F.linear(c, weight_hh)).sigmoid().chunk(4, dim=-1)
        c = forget_gate * c + in_gate * inputs[t].chunk(4, dim=-1)[2].sigmoid()
        h = torch.tanh(out_gate * c)
        outputs[t] = h
    return torch.stack(outputs), h, c


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


