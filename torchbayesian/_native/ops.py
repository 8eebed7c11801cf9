"""The library's operators, registered with `torch.library`: one op per computation on every device.

Each op has a torch implementation (every device and dtype), a C implementation for contiguous
float32 CPU tensors when the kernels are built (see `torchbayesian._native`), a fake implementation
for ``torch.compile``, an autograd formula and a ``vmap`` rule. Random ops take a ``seed``: an int64
CPU tensor drawn from torch's default generator by `draw_seed`, so ``torch.manual_seed`` and the
RNG-state restore of ``torch.utils.checkpoint`` reproduce every draw. The C kernels and the torch
implementation turn a seed into different standard normals (see the performance guide).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchbayesian._native import KERNELS, address

__all__ = ["KL_ONLY", "PERTURBATION", "SAMPLE", "VARIANCE", "draw_seed", "gaussian_draw", "gaussian_draw_backward",
           "local_reparameterization", "rademacher"]

SAMPLE, PERTURBATION, VARIANCE, KL_ONLY = 0, 1, 2, 3
"""Modes of `gaussian_draw`: what its first output holds."""

_NOISY = (SAMPLE, PERTURBATION)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def draw_seed() -> Tensor:
    """Draw a 64-bit seed from torch's default CPU generator, as an int64 CPU tensor (no device sync)."""
    return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)


def _native(*tensors: Tensor) -> bool:
    """Whether the C kernels can run on ``tensors`` (float32, contiguous, CPU, plain tensors)."""
    return KERNELS is not None and all(
        type(tensor) in (Tensor, torch.nn.Parameter)
        and tensor.dtype == torch.float32
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
        for tensor in tensors
    )


def _normal(like: Tensor, seed: Tensor) -> Tensor:
    generator = torch.Generator(device=like.device)
    generator.manual_seed(int(seed) & (2**64 - 1))
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _kl_dtype(dtype: torch.dtype) -> torch.dtype:
    """The KL's dtype: float32 for float16/bfloat16 parameters, whose range a summed KL quickly exceeds."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# ---------------------------------------------------------------------------------------------- Gaussian draw


@torch.library.custom_op("torchbayesian::gaussian_draw", mutates_args=())
def gaussian_draw(
    mu: Tensor, rho: Tensor, seed: Tensor, loc: Tensor, scale: Tensor, mode: int, with_kl: bool
) -> tuple[Tensor, Tensor]:
    """Draw from ``N(mu, softplus(rho)^2)``; see `_torch_gaussian_draw` (the implementation on every device)."""
    return _torch_gaussian_draw(mu, rho, seed, loc, scale, mode, with_kl)


def _torch_gaussian_draw(
    mu: Tensor, rho: Tensor, seed: Tensor, loc: Tensor, scale: Tensor, mode: int, with_kl: bool
) -> tuple[Tensor, Tensor]:
    """Draw from ``N(mu, softplus(rho)^2)`` and, with ``with_kl``, compute ``KL(q || N(loc, scale^2))`` summed.

    Returns ``(out, kl)``: ``out`` is ``mu + sigma * eps`` (`SAMPLE`), ``sigma * eps``
    (`PERTURBATION`), ``sigma^2`` (`VARIANCE`) or empty (`KL_ONLY`); ``kl`` is the summed KL
    (zero without ``with_kl``), in float32 for float16/bfloat16 parameters. ``eps`` is not kept:
    the backward pass recovers ``sigma * eps`` from ``out`` (C kernels) or draws ``eps`` again from
    ``seed`` (torch implementation).
    """
    mu, rho, loc, scale = (tensor.contiguous() for tensor in (mu, rho, loc, scale))
    noise = _normal(mu, seed) if mode in _NOISY else None
    sigma = F.softplus(rho)
    out = {SAMPLE: lambda: torch.addcmul(mu, sigma, noise), PERTURBATION: lambda: sigma * noise,
           VARIANCE: lambda: sigma.square(), KL_ONLY: lambda: mu.new_empty(0)}[mode]()
    kl = _torch_kl(mu, sigma, loc, scale) if with_kl else mu.new_zeros((), dtype=_kl_dtype(mu.dtype))
    return out, kl


def _torch_kl(mu: Tensor, sigma: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """``sum(log(scale / sigma) + (sigma^2 + (mu - loc)^2) / (2 scale^2) - 1/2)``, accumulated in the KL dtype."""
    dtype = _kl_dtype(mu.dtype)
    mu, sigma, loc, scale = (tensor.to(dtype) for tensor in (mu, sigma, loc, scale))
    terms = (sigma.square() + (mu - loc).square()) / (2 * scale.square()) - torch.log(sigma) + (torch.log(scale) - 0.5)
    return terms.sum() if terms.shape == mu.shape else terms.expand_as(mu).sum()


@gaussian_draw.register_kernel("cpu")
def _gaussian_draw_cpu(
    mu: Tensor, rho: Tensor, seed: Tensor, loc: Tensor, scale: Tensor, mode: int, with_kl: bool
) -> tuple[Tensor, Tensor]:
    if not (_native(mu, rho) and loc.numel() == 1 and scale.numel() == 1):
        return _torch_gaussian_draw(mu, rho, seed, loc, scale, mode, with_kl)
    out = mu.new_empty(0) if mode == KL_ONLY else torch.empty_like(mu)
    sums = torch.zeros(3, dtype=torch.float64)
    prior_loc, prior_scale = float(loc), float(scale)
    KERNELS.tb_gaussian_forward(
        address(mu), address(rho), address(out) if mode != KL_ONLY else None, mu.numel(), mode,
        int(seed) & (2**64 - 1), prior_loc, sums.data_ptr() if with_kl else None, torch.get_num_threads(),
    )
    if not with_kl:
        return out, mu.new_zeros(())
    square, deviation, log_sigma = sums.tolist()
    kl = (square + deviation) / (2 * prior_scale**2) - log_sigma + mu.numel() * (math.log(prior_scale) - 0.5)
    return out, torch.tensor(kl, dtype=mu.dtype)


@gaussian_draw.register_fake
def _gaussian_draw_fake(
    mu: Tensor, rho: Tensor, seed: Tensor, loc: Tensor, scale: Tensor, mode: int, with_kl: bool
) -> tuple[Tensor, Tensor]:
    out = mu.new_empty(0) if mode == KL_ONLY else torch.empty_like(mu)
    return out, mu.new_empty((), dtype=_kl_dtype(mu.dtype))


def _gaussian_draw_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    mu, rho, seed, loc, scale, mode, with_kl = inputs
    ctx.save_for_backward(mu, rho, seed, output[0], loc, scale)
    ctx.mode, ctx.with_kl = mode, with_kl


def _gaussian_draw_backward(ctx: Any, grad_out: Tensor | None, grad_kl: Tensor | None) -> tuple[Tensor | None, ...]:
    mu, rho, seed, drawn, loc, scale = ctx.saved_tensors
    mode = ctx.mode
    if grad_out is None:
        grad_out = torch.zeros_like(mu) if mode != KL_ONLY else mu.new_empty(0)
    if grad_kl is None or not ctx.with_kl:
        grad_kl = torch.zeros((), dtype=_kl_dtype(mu.dtype), device=mu.device)
    need_mu, need_rho, _, need_loc, need_scale = ctx.needs_input_grad[:5]
    grads = gaussian_draw_backward(mu, rho, seed, drawn, loc, scale, grad_out, grad_kl, mode, need_loc or need_scale)
    return (grads[0] if need_mu else None, grads[1] if need_rho else None, None, grads[2] if need_loc else None,
            grads[3] if need_scale else None, None, None)


@torch.library.custom_op("torchbayesian::gaussian_draw_backward", mutates_args=())
def gaussian_draw_backward(
    mu: Tensor, rho: Tensor, seed: Tensor, drawn: Tensor, loc: Tensor, scale: Tensor, grad_out: Tensor,
    grad_kl: Tensor, mode: int, need_prior: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients in ``(mu, rho, loc, scale)`` of ``<grad_out, out> + grad_kl * kl`` for `gaussian_draw`.

    An operator of its own, so that ``torch.compile`` traces the backward pass. ``drawn`` is the
    forward's ``out``: the C kernels recover ``sigma * eps`` from it, the torch implementation
    draws ``eps`` again from ``seed``. Without ``need_prior`` the prior's gradients are zeros.
    """
    return _torch_backward(mu, rho, seed, loc, scale, grad_out, grad_kl, mode, need_prior)


def _torch_backward(
    mu: Tensor, rho: Tensor, seed: Tensor, loc: Tensor, scale: Tensor, grad_out: Tensor, grad_kl: Tensor, mode: int,
    need_prior: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dtype = _kl_dtype(mu.dtype)
    sigma = F.softplus(rho)
    grad_mu = grad_out if mode == SAMPLE else torch.zeros_like(mu)
    if mode in _NOISY:
        grad_sigma = grad_out * _normal(mu, seed)  # the forward's eps, drawn again
    elif mode == VARIANCE:
        grad_sigma = 2 * grad_out * sigma
    else:
        grad_sigma = torch.zeros_like(mu)
    weight = grad_kl.to(dtype) / scale.to(dtype).square()
    deviation = mu.to(dtype) - loc.to(dtype)
    grad_mu = grad_mu + (weight * deviation).to(mu.dtype)
    grad_sigma = grad_sigma + (weight * sigma.to(dtype) - grad_kl.to(dtype) / sigma.to(dtype)).to(mu.dtype)
    return (grad_mu, grad_sigma * torch.sigmoid(rho), *_prior_gradients(mu, rho, loc, scale, grad_kl, need_prior))


def _prior_gradients(
    mu: Tensor, rho: Tensor, loc: Tensor, scale: Tensor, grad_kl: Tensor, need_prior: bool
) -> tuple[Tensor, Tensor]:
    """The gradients of ``grad_kl * kl`` in ``(loc, scale)``; zeros without ``need_prior``."""
    if not need_prior:
        return torch.zeros_like(loc), torch.zeros_like(scale)
    dtype = _kl_dtype(mu.dtype)
    sigma, grad_kl, scale = F.softplus(rho), grad_kl.to(dtype), scale.to(dtype)
    deviation = mu.to(dtype) - loc.to(dtype)
    grad_loc = _reduce_to(-grad_kl / scale.square() * deviation, loc.shape).to(loc.dtype)
    squares = (sigma.to(dtype).square() + deviation.square()) / scale.square()
    grad_scale = _reduce_to(grad_kl * (1 - squares) / scale, scale.shape).to(scale.dtype)
    return grad_loc, grad_scale


@gaussian_draw_backward.register_kernel("cpu")
def _gaussian_draw_backward_cpu(
    mu: Tensor, rho: Tensor, seed: Tensor, drawn: Tensor, loc: Tensor, scale: Tensor, grad_out: Tensor,
    grad_kl: Tensor, mode: int, need_prior: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # The same condition as the forward's, so that a kernel-drawn sample is differentiated with its own noise.
    if not (_native(mu, rho, drawn) and loc.numel() == 1 and scale.numel() == 1):
        return _torch_backward(mu, rho, seed, loc, scale, grad_out, grad_kl, mode, need_prior)
    grad_out = grad_out.contiguous()
    grad_mu, grad_rho = torch.empty_like(mu), torch.empty_like(rho)
    KERNELS.tb_gaussian_backward(
        address(mu), address(rho), address(drawn) if mode in _NOISY else None,
        address(grad_out) if mode != KL_ONLY else None, address(grad_out) if mode == SAMPLE else None,
        address(grad_mu), address(grad_rho), mu.numel(), mode, float(grad_kl), float(loc), float(scale) ** 2,
        torch.get_num_threads(),
    )
    return grad_mu, grad_rho, *_prior_gradients(mu, rho, loc, scale, grad_kl, need_prior)


@gaussian_draw_backward.register_fake
def _gaussian_draw_backward_fake(
    mu: Tensor, rho: Tensor, seed: Tensor, drawn: Tensor, loc: Tensor, scale: Tensor, grad_out: Tensor,
    grad_kl: Tensor, mode: int, need_prior: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.empty_like(mu), torch.empty_like(rho), torch.empty_like(loc), torch.empty_like(scale)


def _reduce_to(tensor: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``tensor`` down to ``shape``, to which it broadcasts."""
    return tensor.sum_to_size(shape) if len(shape) else tensor.sum()


gaussian_draw.register_autograd(_gaussian_draw_backward, setup_context=_gaussian_draw_setup)


# ---------------------------------------------------------------------------------------------- local reparameterization


@torch.library.custom_op("torchbayesian::local_reparameterization", mutates_args=())
def local_reparameterization(mean: Tensor, variance: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
    """Sample a Gaussian output; see `_torch_local_reparameterization` (the implementation on every device)."""
    return _torch_local_reparameterization(mean, variance, seed)


def _torch_local_reparameterization(mean: Tensor, variance: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(mean + sqrt(variance) * eps, d out / d variance)`` with fresh standard normal ``eps``.

    The variance is clamped below at the dtype's smallest normal number, so an exactly zero variance
    has a zero (not NaN) gradient.
    """
    tiny = torch.finfo(variance.dtype).tiny
    eps = _normal(mean, seed)
    std = variance.clamp_min(tiny).sqrt()
    slope = torch.where(variance >= tiny, 0.5 * eps / std, torch.zeros_like(eps))
    return torch.addcmul(mean, std, eps), slope


@local_reparameterization.register_kernel("cpu")
def _local_reparameterization_cpu(mean: Tensor, variance: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
    if not (_native(mean, variance) and mean.shape == variance.shape):
        return _torch_local_reparameterization(mean, variance, seed)
    out, slope = torch.empty_like(mean), torch.empty_like(mean)
    KERNELS.tb_local_reparameterization(
        address(mean), address(variance), address(out), address(slope), mean.numel(), int(seed) & (2**64 - 1),
        torch.get_num_threads(),
    )
    return out, slope


@local_reparameterization.register_fake
def _local_reparameterization_fake(mean: Tensor, variance: Tensor, seed: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(mean), torch.empty_like(mean)


def _local_reparameterization_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])
    ctx.variance_shape = inputs[1].shape
    ctx.mark_non_differentiable(output[1])


def _local_reparameterization_backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
    (slope,) = ctx.saved_tensors
    grad_variance = (grad * slope).sum_to_size(ctx.variance_shape) if ctx.needs_input_grad[1] else None
    return grad, grad_variance, None


local_reparameterization.register_autograd(_local_reparameterization_backward,
                                           setup_context=_local_reparameterization_setup)


# ---------------------------------------------------------------------------------------------- random signs


@torch.library.custom_op("torchbayesian::rademacher", mutates_args=())
def rademacher(like: Tensor, seed: Tensor) -> Tensor:
    """Draw random signs shaped like ``like``; see `_torch_rademacher` (the implementation on every device)."""
    return _torch_rademacher(like, seed)


def _torch_rademacher(like: Tensor, seed: Tensor) -> Tensor:
    """Return a tensor of ``like``'s shape, dtype and device with entries -1 or +1, each with probability 1/2.

    Only the shape, dtype and device of ``like`` are read (the shape travels as a tensor rather than
    an ``int[]`` argument).
    """
    generator = torch.Generator(device=like.device)
    generator.manual_seed(int(seed) & (2**64 - 1))
    signs = torch.randint(0, 2, like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return signs.mul_(2).sub_(1)


@rademacher.register_kernel("cpu")
def _rademacher_cpu(like: Tensor, seed: Tensor) -> Tensor:
    if not _native(like):
        return _torch_rademacher(like, seed)
    out = torch.empty(like.shape, dtype=like.dtype)
    KERNELS.tb_rademacher(out.data_ptr(), out.numel(), int(seed) & (2**64 - 1), 0)
    return out


@rademacher.register_fake
def _rademacher_fake(like: Tensor, seed: Tensor) -> Tensor:
    return torch.empty_like(like)


def _rademacher_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    ctx.mark_non_differentiable(output)


def _rademacher_backward(ctx: Any, grad: Tensor) -> tuple[None, None]:
    return None, None


rademacher.register_autograd(_rademacher_backward, setup_context=_rademacher_setup)


# ---------------------------------------------------------------------------------------------- vmap


def _looped(op: Callable[..., Any], outputs: int) -> Callable[..., Any]:
    """A ``vmap`` rule that runs ``op`` once per batch element (each with its own seed) and stacks the results."""

    def rule(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[Any, Any]:
        results = []
        for index in range(info.batch_size):
            picked = [arg.select(dim, index) if isinstance(arg, Tensor) and dim is not None else arg
                      for arg, dim in zip(args, in_dims)]
            results.append(op(*picked))
        if outputs == 1:
            return torch.stack(results), 0
        return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * outputs

    return rule


torch.library.register_vmap(gaussian_draw, _looped(gaussian_draw, 2))
torch.library.register_vmap(local_reparameterization, _looped(local_reparameterization, 2))
torch.library.register_vmap(rademacher, _looped(rademacher, 1))
