"""`EstimatorPosterior`: a Gaussian posterior that runs its layer with a low-variance gradient estimator."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchbayesian import _sampling
from torchbayesian._native import ops
from torchbayesian.estimators.registry import Kernel, LayerOp, find_kernel, registered_base, supported_layers
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.registration import get_posterior

__all__ = ["EstimatorPosterior", "Term", "channel_view", "rademacher", "sampled_weights"]


class Term(NamedTuple):
    """One tensor of a layer as an estimator sees it.

    Attributes:
        value (Tensor | None): The posterior mean for an estimator posterior; otherwise the tensor
            as the layer reads it (a weight sample, a deterministic parameter, or ``None``).
        posterior (EstimatorPosterior | None): The estimator posterior when it adds noise (it is
            not `frozen`), else ``None``.
    """

    value: Tensor | None
    posterior: EstimatorPosterior | None


class EstimatorPosterior(GaussianPosterior):
    """Gaussian posterior on a layer's weight or bias whose noise enters through the layer's output.

    Parameters, priors, KL divergence, freezing and `remove_posterior` are those of
    `GaussianPosterior`; reading ``layer.weight`` still returns a weight sample. What changes is the
    layer's forward: on registration the posterior installs an instance-level ``forward`` on its
    layer that computes the output from ``mu`` and ``sigma`` with `estimate`, so no weight is
    sampled. The layer's map comes from the kernel registered for its class
    (`register_estimator`). Removing the last estimator posterior of the layer restores its own
    forward; when every estimator posterior of the layer is frozen the layer's own forward runs,
    which reads the means, so frozen outputs are exactly those of the mean network.

    Supported layers are those with a kernel in `register_estimator`: `nn.Linear`,
    `nn.Conv1d/2d/3d` and `nn.ConvTranspose1d/2d/3d` with any constructor arguments, their lazy
    variants once materialised, and ``transformers.pytorch_utils.Conv1D``. Subclasses implement
    `estimate`. The weight and bias of one layer must use the same estimator class; a
    deterministic tensor or a plain `GaussianPosterior` next to it enters with its value.

    Takes the arguments of `GaussianPosterior` (``shape``, ``mu_init``, ``sigma_init``, ``rho_init``, ...).

    Raises:
        TypeError: On registration, if the layer type is unsupported (see `check_module`).

    Attributes:
        tensor_names (tuple[str, ...]): The layer tensors an estimator posterior can be registered on.

    Note:
        The estimator acts only when the layer itself is called. A parent that reads the layer's
        weight directly (``nn.MultiheadAttention`` reads ``out_proj.weight``) gets ordinary weight
        samples, which have the same distribution.
    """

    tensor_names: ClassVar[tuple[str, ...]] = ("weight", "bias")

    @classmethod
    @abstractmethod
    def estimate(cls, op: LayerOp, input: Tensor, weight: Term, bias: Term) -> Tensor:
        """Return one sample of the layer's output for ``input``.

        Args:
            op (LayerOp): The layer's affine map with the weight and bias left open.
            input (Tensor): The layer's input.
            weight (Term): The weight's mean or value, and its posterior if it adds noise.
            bias (Term): The same for the bias; at least one of the two has a posterior.

        Returns:
            Tensor: Output of the layer's shape whose per-element distribution matches the
            output under ``weight ~ q``, ``bias ~ q``.
        """

    @classmethod
    def check_module(cls, module: nn.Module, name: str) -> None:
        """Raise unless ``name`` is the weight or bias of a layer with a registered kernel.

        Raises:
            TypeError: If the tensor is not a weight or bias, the layer type has no kernel, or the
                layer's other tensor uses a different estimator.
        """
        layer_type = parametrize.type_before_parametrizations(module)
        layer = layer_type.__name__
        fix = (
            f"register a kernel with register_estimator({layer}), or pass fallback=GaussianPosterior "
            "to BayesianModule to use plain weight sampling there"
        )
        if find_kernel(module) is None:
            base = registered_base(layer_type)
            why = "" if base is None else f" (it overrides the forward of {base.__name__}, so it needs its own)"
            raise TypeError(
                f"{cls.__name__} does not support {layer}.{name}: {layer} has no estimator kernel{why}.\n"
                f"supported layers: {', '.join(supported_layers())}\n"
                f"fix: {fix}."
            )
        if name not in cls.tensor_names:
            raise TypeError(
                f"{cls.__name__} applies to the {' and '.join(cls.tensor_names)} of a supported layer, "
                f"got {layer}.{name}.\n"
                f"supported layers: {', '.join(supported_layers())}\n"
                f"fix: pass fallback=GaussianPosterior to BayesianModule to use plain weight sampling there."
            )
        other_name = "bias" if name == "weight" else "weight"
        other = get_posterior(module, other_name)
        if isinstance(other, EstimatorPosterior) and type(other) is not cls:
            raise TypeError(
                f"{layer}.{name} cannot use {cls.__name__} while {layer}.{other_name} uses "
                f"{type(other).__name__}: a layer runs one estimator."
            )

    def on_register(self, module: nn.Module, name: str) -> None:
        """Install the estimator forward on ``module`` unless its other tensor already did."""
        if not isinstance(module.__dict__.get("forward"), _EstimatorForward):
            kernel = find_kernel(module)
            if kernel is None:
                raise TypeError(f"{type(self).__name__}: no estimator kernel for {type(module).__name__}.")
            module.forward = _EstimatorForward(module, kernel)

    def on_remove(self, module: nn.Module, name: str) -> None:
        """Restore the layer's own forward once no estimator posterior is left on it."""
        forward = module.__dict__.get("forward")
        if not isinstance(forward, _EstimatorForward):
            return
        if any(isinstance(get_posterior(module, other), EstimatorPosterior) for other in self.tensor_names):
            return
        if forward.previous is None:
            del module.forward
        else:
            module.forward = forward.previous

    def perturbation(self) -> Tensor:
        """Return ``sigma * eps``: the weight noise, drawn once per sampling scope.

        Kept apart from the sample, so that reading ``layer.weight`` in the same scope still
        returns a full sample.
        """
        return self._draw_once(ops.PERTURBATION)

    def variance(self) -> Tensor:
        """Return ``sigma**2``, computed once per sampling scope."""
        return self._draw_once(ops.VARIANCE)

    def _draw_once(self, mode: int) -> Tensor:
        """`_draw` for the perturbation or the variance, kept in the scope's record for later reads."""
        scope = _sampling.active()
        if scope is None:
            return self._draw(mode, None)
        record = scope.record(self)
        kept = record.perturbation if mode == ops.PERTURBATION else record.variance
        if kept is None:
            kept = self._draw(mode, record)
            if mode == ops.PERTURBATION:
                record.perturbation = kept
            else:
                record.variance = kept
        return kept


class _EstimatorForward:
    """The instance-level ``forward`` installed on a layer with estimator posteriors."""

    def __init__(self, layer: nn.Module, kernel: Kernel) -> None:
        self.layer = layer
        self.kernel = kernel
        self.previous = layer.__dict__.get("forward")
        self.sample_weights = False

    def __call__(self, input: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        layer = self.layer
        weight, bias = _term(layer, "weight"), _term(layer, "bias")
        posterior = weight.posterior if weight.posterior is not None else bias.posterior
        if posterior is None or self.sample_weights:
            if self.previous is not None:
                return self.previous(input, *args, **kwargs)
            return type(layer).forward(layer, input, *args, **kwargs)
        return type(posterior).estimate(self.kernel(layer, input, *args, **kwargs), input, weight, bias)


@contextmanager
def sampled_weights(module: nn.Module) -> Iterator[nn.Module]:
    """Run the layers of ``module`` that hold estimator posteriors with plain weight samples inside the block.

    The layer's own forward then reads a sample of its weight, so that one sample drawn in an
    enclosing `reuse_samples` block holds for every call of the layer (Flipout or the local
    reparameterization draw new noise at each call). `BayesianModule.generate` uses it to keep one
    weight sample for all the decoding steps of a sequence.
    """
    forwards = [layer.__dict__["forward"] for layer in module.modules()
                if isinstance(layer.__dict__.get("forward"), _EstimatorForward)]
    states = [(forward, forward.sample_weights) for forward in forwards]
    for forward in forwards:
        forward.sample_weights = True
    try:
        yield module
    finally:
        for forward, state in states:
            forward.sample_weights = state


def _term(layer: nn.Module, name: str) -> Term:
    posterior = get_posterior(layer, name)
    if isinstance(posterior, EstimatorPosterior) and not posterior.frozen:
        return Term(posterior.mu, posterior)
    return Term(getattr(layer, name, None), None)


def rademacher(reference: Tensor, channel_dim: int) -> Tensor:
    """Return random signs, one per example and channel of ``reference``, broadcastable to it.

    Dimensions before the channel are batch dimensions: the signs vary along the first one (the
    example) and are shared along the others (a sequence) and along spatial dimensions.
    """
    shape = [1] * reference.dim()
    shape[channel_dim] = reference.shape[channel_dim]
    if reference.dim() > -channel_dim:
        shape[0] = reference.shape[0]
    return ops.rademacher(reference.detach().new_empty(shape), ops.draw_seed())


def channel_view(vector: Tensor, channel_dim: int) -> Tensor:
    """Reshape a per-channel ``vector`` to broadcast along ``channel_dim`` of an output."""
    return vector.reshape(vector.shape[0], *[1] * (-channel_dim - 1))
