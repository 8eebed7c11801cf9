"""Autograd functions around the fused Gaussian kernels of ``gaussian.c``."""

from __future__ import annotations

import math
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


def draw(mu: Tensor, rho: Tensor, mode: int, prior: ScalarPrior | None) -> tuple[Tensor, Tensor | None]:
    """Return ``mu + sigma * eps`` (`SAMPLE`), ``sigma * eps`` (`PERTURBATION`) or ``sigma**2`` (`VARIANCE`).

    With ``prior = (loc, scale)`` the same pass also returns the summed ``KL(q || N(loc, scale^2))``;
    both outputs backpropagate to ``mu`` and ``rho`` through one fused backward pass.
    """
    ((out, kl),) = draw_many([Job(mu, rho, mode, prior)])
    return out, kl


def kl_divergence(mu: Tensor, rho: Tensor, prior: ScalarPrior) -> Tensor:
    """Return the summed ``KL(N(mu, softplus(rho)^2) || N(loc, scale^2))`` in one pass."""
    ((_, kl),) = draw_many([Job(mu, rho, KL_ONLY, prior)])
    return kl


def draw_many(jobs: Sequence[Job]) -> list[tuple[Tensor | None, Tensor | None]]:
    """Run several jobs as one autograd node: ``(output, kl)`` per job, ``None`` where it has none.

    One node instead of one per posterior saves the per-call overhead of autograd, which dominates
    for the many small tensors (biases, small layers) of a model.
    """
    plan = tuple((job.mode, job.prior) for job in jobs)
    flat = _Fused.apply(plan, *[tensor for job in jobs for tensor in (job.mu, job.rho)])
    results, position = [], 0
    for mode, prior in plan:
        out = kl = None
        if mode != KL_ONLY:
            out, position = flat[position], position + 1
        if prior is not None:
            kl, position = flat[position], position + 1
        results.append((out, kl))
    return results


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: tuple[tuple[int, ScalarPrior | None], ...], *tensors: Tensor) -> tuple[Tensor, ...]:
        outputs, saved = [], []
        for index, (mode, prior) in enumerate(plan):
            mu, rho = tensors[2 * index], tensors[2 * index + 1]
            out = None if mode == KL_ONLY else torch.empty_like(mu)
            eps = torch.empty_like(mu) if mode in (SAMPLE, PERTURBATION) else None
            kl = _forward(mu, rho, out, eps, mode, prior)
            outputs += [tensor for tensor in (out, kl if prior is not None else None) if tensor is not None]
            saved += [mu, rho, eps]
        ctx.save_for_backward(*saved)
        ctx.plan = plan
        ctx.set_materialize_grads(False)
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        result: list[Tensor | None] = [None]
        position = 0
        for index, (mode, prior) in enumerate(ctx.plan):
            grad_out = grad_kl = None
            if mode != KL_ONLY:
                grad_out, position = grads[position], position + 1
            if prior is not None:
                grad_kl, position = grads[position], position + 1
            mu, rho, eps = saved[3 * index: 3 * index + 3]
            needs = ctx.needs_input_grad[1 + 2 * index], ctx.needs_input_grad[2 + 2 * index]
            result += _backward(needs, prior, mu, rho, eps, mode, grad_out, grad_kl)
        return tuple(result)


def _forward(
    mu: Tensor, rho: Tensor, out: Tensor | None, eps: Tensor | None, mode: int, prior: ScalarPrior | None
) -> Tensor:
    loc, scale = prior if prior is not None else (0.0, 1.0)
    sums = None if prior is None else torch.zeros(torch.get_num_threads(), 3, dtype=torch.float64)
    draw_seed = seed()

    def call(index: int, offset: int, count: int) -> None:
        library().tb_gaussian_forward(
            address(mu, offset), address(rho, offset), address(out, offset), address(eps, offset), count, mode,
            draw_seed, offset, loc, None if sums is None else sums[index].data_ptr(),
        )

    split(mu.numel(), call)
    if sums is None:
        return mu.new_zeros(())
    square, deviation, log_sigma = sums.sum(0).tolist()
    value = (square + deviation) / (2 * scale * scale) - log_sigma + mu.numel() * (math.log(scale) - 0.5)
    return torch.tensor(value, dtype=mu.dtype)


def _backward(
    needs: tuple[bool, bool], prior: ScalarPrior | None, mu: Tensor, rho: Tensor, eps: Tensor | None, mode: int,
    grad_out: Tensor | None, grad_kl: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    need_mu, need_rho = needs
    kl_grad = 0.0 if grad_kl is None else float(grad_kl)
    if grad_out is not None:
        grad_out = grad_out.contiguous()
    elif kl_grad == 0.0:
        return None, None
    # With no KL gradient, the sample's gradient in mu is the upstream gradient itself, and the
    # other outputs do not depend on mu.
    pass_through = mode == SAMPLE and kl_grad == 0.0
    need_mu = need_mu and (mode == SAMPLE or kl_grad != 0.0)
    grad_mu = torch.empty_like(mu) if need_mu and not pass_through else None
    grad_rho = torch.empty_like(rho) if need_rho else None
    if grad_mu is not None or grad_rho is not None:
        loc, scale = prior if prior is not None else (0.0, 1.0)

        def call(index: int, offset: int, count: int) -> None:
            library().tb_gaussian_backward(
                address(mu, offset), address(rho, offset), address(eps, offset), address(grad_out, offset),
                address(grad_mu, offset), address(grad_rho, offset), count, mode, kl_grad, loc, scale * scale,
            )

        split(mu.numel(), call)
    if need_mu and pass_through:
        grad_mu = grad_out
    return grad_mu, grad_rho
