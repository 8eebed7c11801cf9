"""`EstimatorPosterior`: a Gaussian posterior that runs its layer with a low-variance gradient estimator."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchbayesian import _sampling
from torchbayesian._native import ops
from torchbayesian.estimators.registry import Kernel, LayerOp, find_kernel, registered_base, supported_layers
from torchbayesian.posteriors.gaussian import GaussianPosterior
from torchbayesian.registration import get_posterior

__all__ = ["EstimatorPosterior", "channel_view", "rademacher", "rademacher_pair", "sampled_weights"]


class EstimatorPosterior(GaussianPosterior):
    """Gaussian posterior on a layer's weight or bias whose noise enters through the layer's output.

    Parameters, priors, KL divergence, freezing and `remove_posterior` are those of
    `GaussianPosterior`; reading ``layer.weight`` outside the layer's call still returns a weight
    sample. What changes is the layer's call: on registration the posterior adds a forward
    pre-hook and a forward hook to its layer. While the layer runs its own forward, reads of its
    estimator tensors return the means, so the layer computes its mean output; the hook then adds
    the noise with `estimate`, from ``mu`` and ``sigma``, so no weight is sampled. The noise path
    evaluates the layer's map with the kernel registered for its class (`register_estimator`).
    Removing the last estimator posterior of the layer removes the hooks; when every estimator
    posterior of the layer is frozen the hooks add nothing, so frozen outputs are exactly those
    of the mean network.

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
        samples, which have the same distribution. The posterior's hook runs before the forward
        hooks the layer already had, so those see the noisy output; global module hooks
        (``register_module_forward_hook``) run before it and see the mean output.
    """

    tensor_names: ClassVar[tuple[str, ...]] = ("weight", "bias")
    _estimator_hooks: tuple[_EstimatorHooks, ...] = ()  # one per layer the posterior is registered on

    @classmethod
    @abstractmethod
    def estimate(
        cls,
        op: LayerOp,
        input: Tensor,
        mean: Tensor,
        weight: EstimatorPosterior | None,
        bias: EstimatorPosterior | None,
    ) -> Tensor:
        """Return one sample of the layer's output for ``input``, given its output ``mean`` at the means.

        Args:
            op (LayerOp): The layer's affine map with the weight and bias left open.
            input (Tensor): The layer's input.
            mean (Tensor): The layer's output with each estimator tensor at its mean (and every
                other tensor as the layer read it).
            weight (EstimatorPosterior | None): The weight's posterior if it adds noise.
            bias (EstimatorPosterior | None): The same for the bias; at least one of the two is given.

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
        """Add the estimator hooks to ``module`` unless its other tensor's posterior already did."""
        other = _estimator_posterior(module, _other(name))
        hooks = None if other is None else other._hooks_of(module)
        if hooks is None:
            kernel = find_kernel(module)
            if kernel is None:
                raise TypeError(f"{type(self).__name__}: no estimator kernel for {type(module).__name__}.")
            hooks = _EstimatorHooks(module, kernel)
        self._estimator_hooks = (*self._estimator_hooks, hooks)

    def on_remove(self, module: nn.Module, name: str) -> None:
        """Remove the estimator hooks once no estimator posterior is left on the layer."""
        hooks = self._hooks_of(module)
        if hooks is None:
            return
        self._estimator_hooks = tuple(kept for kept in self._estimator_hooks if kept is not hooks)
        if _estimator_posterior(module, _other(name)) is None:
            hooks.remove()

    def _hooks_of(self, module: nn.Module) -> _EstimatorHooks | None:
        """The hooks this posterior shares on ``module`` (a tied posterior is on several layers)."""
        return next((hooks for hooks in self._estimator_hooks if hooks.layer is module), None)

    def forward(self) -> Tensor:
        """Return the tensor: the mean while the layer runs its own forward for the estimator, otherwise
        as `VariationalPosterior.forward` (the mean when frozen, a sample otherwise)."""
        scope = _sampling.active()
        if scope is not None and not self.frozen and scope.record(self).reads_mean:
            return self.mu
        return super().forward()

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


class _EstimatorHooks:
    """The forward pre-hook and forward hook of a layer with estimator posteriors.

    The pre-hook marks the layer's noisy estimator posteriors in the sampling scope (opening one if
    none is open), so that the layer's own forward reads their means; the hook clears the marks and
    adds the noise to the output with the posterior's `EstimatorPosterior.estimate`.
    """

    def __init__(self, layer: nn.Module, kernel: Kernel) -> None:
        self.layer = layer
        self.kernel = kernel
        self.handles = (
            layer.register_forward_pre_hook(self.before, with_kwargs=True),
            layer.register_forward_hook(self.after, with_kwargs=True, always_call=True, prepend=True),
        )

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def before(self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        scope = _sampling.active()
        noisy = [] if scope is not None and id(layer) in scope.sampled_layers else _noisy_posteriors(layer)
        if not noisy:
            return
        scope = _sampling.open_scope(self)
        for posterior in noisy:
            scope.record(posterior).reads_mean = True

    def after(self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Tensor | None:
        scope = _sampling.active()
        if scope is None:
            return None
        marked = {}
        for name in EstimatorPosterior.tensor_names:
            posterior = _estimator_posterior(layer, name)
            record = None if posterior is None else scope.record(posterior)
            if record is not None and record.reads_mean:
                record.reads_mean = False
                marked[name] = posterior
        try:
            if not marked or output is None:
                return None
            input, rest, options = _split_input(args, kwargs)
            op = self.kernel(layer, input, *rest, **options)
            weight, bias = marked.get("weight"), marked.get("bias")
            return type(weight or bias).estimate(op, input, output, weight, bias)
        finally:
            _sampling.close_scope(self)


def _split_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, tuple[Any, ...], dict[str, Any]]:
    """The layer's input and its other arguments, however the layer was called."""
    if args:
        return args[0], args[1:], kwargs
    options = dict(kwargs)
    return options.pop("input"), (), options


def _other(name: str) -> str:
    return "bias" if name == "weight" else "weight"


def _estimator_posterior(layer: nn.Module, name: str) -> EstimatorPosterior | None:
    posterior = get_posterior(layer, name)
    return posterior if isinstance(posterior, EstimatorPosterior) else None


def _noisy_posteriors(layer: nn.Module) -> list[EstimatorPosterior]:
    """The layer's estimator posteriors that add noise (not frozen)."""
    found = (_estimator_posterior(layer, name) for name in EstimatorPosterior.tensor_names)
    return [posterior for posterior in found if posterior is not None and not posterior.frozen]


@contextmanager
def sampled_weights(module: nn.Module) -> Iterator[nn.Module]:
    """Run the layers of ``module`` that hold estimator posteriors with plain weight samples inside the block.

    The layer's own forward then reads a sample of its weight, so that one sample drawn in the
    block's sampling scope holds for every call of the layer (Flipout or the local
    reparameterization draw new noise at each call). The block is (or joins) a `reuse_samples`
    scope, so it applies to this thread and task only. `BayesianModule.generate` uses it to keep
    one weight sample for all the decoding steps of a sequence.
    """
    layers = {id(layer) for layer in module.modules()
              if any(_estimator_posterior(layer, name) is not None for name in EstimatorPosterior.tensor_names)}
    with _sampling.reuse_samples():
        scope = _sampling.active()
        added = layers - scope.sampled_layers
        scope.sampled_layers |= added
        try:
            yield module
        finally:
            scope.sampled_layers -= added


def rademacher(reference: Tensor, channel_dim: int) -> Tensor:
    """Return random signs, one per example and channel of ``reference``, broadcastable to it.

    Dimensions before the channel are batch dimensions: the signs vary along the first one (the
    example) and are shared along the others (a sequence) and along spatial dimensions.
    """
    return ops.rademacher(reference.detach().new_empty(_sign_shape(reference, channel_dim)), ops.draw_seed())


def rademacher_pair(input: Tensor, output: Tensor, channel_dim: int) -> tuple[Tensor, Tensor]:
    """Return `rademacher` signs for a layer's ``input`` and ``output``, drawn together in one call.

    Both have the dtype of ``output``; the input's and the output's batch dimensions must agree.
    """
    input_shape, output_shape = _sign_shape(input, channel_dim), _sign_shape(output, channel_dim)
    examples = input_shape[0] if input.dim() > -channel_dim else 1
    input_channels = input.shape[channel_dim]
    signs = ops.rademacher(output.detach().new_empty(examples, input_channels + output.shape[channel_dim]),
                           ops.draw_seed())
    return signs[:, :input_channels].reshape(input_shape), signs[:, input_channels:].reshape(output_shape)


def _sign_shape(reference: Tensor, channel_dim: int) -> list[int]:
    """``[examples, 1, ..., channels, 1, ...]``: the shape of the signs for ``reference``."""
    shape = [1] * reference.dim()
    shape[channel_dim] = reference.shape[channel_dim]
    if reference.dim() > -channel_dim:
        shape[0] = reference.shape[0]
    return shape


def channel_view(vector: Tensor, channel_dim: int) -> Tensor:
    """Reshape a per-channel ``vector`` to broadcast along ``channel_dim`` of an output."""
    return vector.reshape(vector.shape[0], *[1] * (-channel_dim - 1))
