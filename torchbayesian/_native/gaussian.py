"""Autograd functions around the fused Gaussian kernels of ``gaussian.c``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torchbayesian._native import address, library, split
from torchbayesian._native.random import seed

__all__ = ["KL_ONLY", "PERTURBATION", "SAMPLE", "VARIANCE", "Job", "draw", "draw_many", "kl_divergence"]

SAMPLE, PERTURBATION, VARIANCE, KL_ONLY = 0, 1, 2, 3

ScalarPrior = tuple[float, float]


class Job(NamedTuple):
    """One posterior's work for `draw_many`: its ``mu`` and ``rho``, a mode and an optional scalar prior."""

    mu: Tensor
    rho: Tensor
    mode: int
    prior: ScalarPrior | None


class Draw(NamedTuple):
    """The outputs of one `Job`: ``None`` where the job has none.

    Attributes:
        out (Tensor | None): The sample, perturbation or variance (not for `KL_ONLY`).
        kl (Tensor | None): The summed KL divergence to the job's prior, when it has one.
        mean (Tensor | None): For `PERTURBATION` and `VARIANCE`, ``mu`` itself as an output of the same
            node. A layer that reads its mean through it gets the gradient of its mean path summed
            with the KL's inside the fused backward pass, instead of in a separate addition.
    """

    out: Tensor | None
    kl: Tensor | None
    mean: Tensor | None


def draw(mu: Tensor, rho: Tensor, mode: int, prior: ScalarPrior | None) -> Draw:
    """Return ``mu + sigma * eps`` (`SAMPLE`), ``sigma * eps`` (`PERTURBATION`) or ``sigma**2`` (`VARIANCE`).

    With ``prior = (loc, scale)`` the same pass also returns the summed ``KL(q || N(loc, scale^2))``;
    all outputs backpropagate to ``mu`` and ``rho`` through one fused backward pass.
    """
    return draw_many([Job(mu, rho, mode, prior)])[0]


def kl_divergence(mu: Tensor, rho: Tensor, prior: ScalarPrior) -> Tensor:
    """Return the summed ``KL(N(mu, softplus(rho)^2) || N(loc, scale^2))`` in one pass."""
    return draw_many([Job(mu, rho, KL_ONLY, prior)])[0].kl


def draw_many(jobs: Sequence[Job]) -> list[Draw]:
    """Run several jobs as one autograd node, returning one `Draw` per job.

    One node instead of one per posterior saves the per-call overhead of autograd, which dominates
    for the many small tensors (biases, small layers) of a model.
    """
    plan = tuple((job.mode, job.prior) for job in jobs)
    flat = iter(_Fused.apply(plan, *[tensor for job in jobs for tensor in (job.mu, job.rho)]))
    return [
        Draw(
            None if mode == KL_ONLY else next(flat),
            None if prior is None else next(flat),
            next(flat) if mode in _WITH_MEAN else None,
        )
        for mode, prior in plan
    ]


_WITH_MEAN = (PERTURBATION, VARIANCE)


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: tuple[tuple[int, ScalarPrior | None], ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        # One table of KL sums for the whole node. Each job draws its own seed, so the random numbers do
        # not depend on how posteriors are grouped into nodes (one model against FSDP units).
        sums = torch.zeros(len(plan), torch.get_num_threads(), 3, dtype=torch.float64)
        drawn, saved = [], []
        for index, (mode, prior) in enumerate(plan):
            mu, rho = tensors[2 * index], tensors[2 * index + 1]
            out = None if mode == KL_ONLY else torch.empty_like(mu)
            eps = torch.empty_like(mu) if mode == SAMPLE else None
            _forward(mu, rho, out, eps, mode, prior, seed(), None if prior is None else sums[index])
            drawn.append((out, mu.view_as(mu) if mode in _WITH_MEAN else None))
            # The backward needs the noise: kept for a sample, recovered as out / sigma from a perturbation.
            saved += [mu, rho, eps if mode == SAMPLE else out if mode == PERTURBATION else None]
        totals = sums.sum(1).tolist()
        outputs = []
        for index, ((out, mean), (_, prior)) in enumerate(zip(drawn, plan)):
            mu = tensors[2 * index]
            kl = None if prior is None else torch.tensor(_kl_value(totals[index], mu.numel(), prior), dtype=mu.dtype)
            outputs += [tensor for tensor in (out, kl, mean) if tensor is not None]
        ctx.save_for_backward(*saved)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        # Autograd hands one tensor to several outputs that share an upstream gradient (out + mean).
        memory = Counter(grad.untyped_storage().data_ptr() for grad in grads if grad is not None)
        shared = {address for address, count in memory.items() if count > 1}
        result: list[Tensor | None] = [None]
        position = 0
        for index, (mode, prior) in enumerate(ctx.plan):
            grad_out = grad_kl = grad_mean = None
            if mode != KL_ONLY:
                grad_out, position = grads[position], position + 1
            if prior is not None:
                grad_kl, position = grads[position], position + 1
            if mode in _WITH_MEAN:
                grad_mean, position = grads[position], position + 1
            mu, rho, noise = saved[3 * index: 3 * index + 3]
            needs = ctx.needs_input_grad[1 + 2 * index], ctx.needs_input_grad[2 + 2 * index]
            result += _backward(needs, prior, mu, rho, noise, mode, grad_out, grad_kl, grad_mean, shared)
        return tuple(result)


def _forward(
    mu: Tensor, rho: Tensor, out: Tensor | None, eps: Tensor | None, mode: int, prior: ScalarPrior | None,
    draw_seed: int, sums: Tensor | None,
) -> None:
    """Run the forward kernel; with a prior, each thread's span adds its KL sums to its row of ``sums``."""
    loc = prior[0] if prior is not None else 0.0

    def call(index: int, offset: int, count: int) -> None:
        library().tb_gaussian_forward(
            address(mu, offset), address(rho, offset), address(out, offset), address(eps, offset), count, mode,
            draw_seed, offset, loc, None if sums is None else sums[index].data_ptr(),
        )

    split(mu.numel(), call)


def _kl_value(sums: Sequence[float], numel: int, prior: ScalarPrior) -> float:
    """``KL(q || N(loc, scale^2))`` from the kernel's sums of ``sigma^2``, ``(mu - loc)^2`` and ``log sigma``."""
    square, deviation, log_sigma = sums
    scale = prior[1]
    return (square + deviation) / (2 * scale * scale) - log_sigma + numel * (math.log(scale) - 0.5)


def _backward(
    needs: tuple[bool, bool], prior: ScalarPrior | None, mu: Tensor, rho: Tensor, noise: Tensor | None, mode: int,
    grad_out: Tensor | None, grad_kl: Tensor | None, grad_mean: Tensor | None, shared: set[int],
) -> tuple[Tensor | None, Tensor | None]:
    need_mu, need_rho = needs
    kl_grad = 0.0 if grad_kl is None else float(grad_kl)
    if mode == SAMPLE:
        grad_mean = grad_out  # d sample / d mu = 1
    grad_out, grad_mean = (None if grad is None else grad.contiguous() for grad in (grad_out, grad_mean))
    # With no KL gradient, the gradient in mu is the mean's (or the sample's) upstream gradient itself.
    pass_through = kl_grad == 0.0
    need_mu = need_mu and (grad_mean is not None or kl_grad != 0.0)
    need_rho = need_rho and (grad_out is not None or kl_grad != 0.0)
    # The outputs of the estimators' modes are internal tensors; their upstream gradients, when this
    # node holds the only reference, are overwritten with the results instead of allocating new ones.
    reuse = mode in _WITH_MEAN
    grad_mu = _buffer_for(mu, grad_mean if reuse else None, shared) if need_mu and not pass_through else None
    grad_rho = _buffer_for(rho, grad_out if reuse else None, shared) if need_rho else None
    if grad_mu is not None or grad_rho is not None:
        loc, scale = prior if prior is not None else (0.0, 1.0)

        def call(index: int, offset: int, count: int) -> None:
            library().tb_gaussian_backward(
                address(mu, offset), address(rho, offset), address(noise, offset), address(grad_out, offset),
                address(grad_mean, offset), address(grad_mu, offset), address(grad_rho, offset), count, mode, kl_grad,
                loc, scale * scale,
            )

        split(mu.numel(), call)
    if need_mu and pass_through:
        grad_mu = grad_mean
    return grad_mu, grad_rho


def _buffer_for(like: Tensor, grad: Tensor | None, shared: set[int]) -> Tensor:
    """Return ``grad`` when it is laid out like ``like`` and nothing else references its memory, else a new tensor.

    Writing a gradient into its own upstream gradient saves an allocation of the tensor's size and
    its first-touch page faults; the kernels read each element before writing it. ``shared`` holds
    the memory addresses of the gradients the node received more than once.
    """
    if (
        grad is not None
        and grad.untyped_storage().data_ptr() not in shared
        and grad.shape == like.shape
        and grad.dtype == like.dtype
        and grad.device == like.device
        and grad.is_contiguous()
        and _sole_owner(grad)
    ):
        return grad
    return torch.empty_like(like)


def _sole_owner(tensor: Tensor) -> bool:
    """Whether ``tensor``, its base when it is a view, and its memory have no holder besides the caller.

    Counts the references torch keeps (autograd's buffers and saved tensors, views, storages);
    Python names for the same objects elsewhere are invisible here, which is why only the internal
    outputs of the estimators' modes, which only the layer's kernel reads, have their gradients reused.
    """
    use_count = getattr(tensor, "_use_count", None)
    storage_use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None or storage_use_count is None or use_count() != 1:
        return False
    base = tensor._base
    # A view holds its base; the base's Python object made by `_base` holds it once more.
    if base is not None and base._use_count() != 2:
        return False
    # The tensor, its base and the temporary storage object are the storage's only holders.
    return storage_use_count(tensor.untyped_storage()._cdata) == (2 if base is None else 3)
