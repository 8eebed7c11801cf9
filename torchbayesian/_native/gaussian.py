"""Autograd functions around the fused Gaussian kernels of ``gaussian.c``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torchbayesian._native import library
from torchbayesian._native.random import seed

__all__ = ["PERTURBATION", "SAMPLE", "VARIANCE", "draw", "kl_divergence"]

SAMPLE, PERTURBATION, VARIANCE, _KL_ONLY = 0, 1, 2, 3

ScalarPrior = tuple[float, float]


def draw(mu: Tensor, rho: Tensor, mode: int, prior: ScalarPrior | None) -> tuple[Tensor, Tensor | None]:
    """Return ``mu + sigma * eps`` (`SAMPLE`), ``sigma * eps`` (`PERTURBATION`) or ``sigma**2`` (`VARIANCE`).

    With ``prior = (loc, scale)`` the same pass also returns the summed ``KL(q || N(loc, scale^2))``;
    both outputs backpropagate to ``mu`` and ``rho`` through one fused backward pass.
    """
    out, kl = _Draw.apply(mu, rho, mode, prior)
    return out, kl if prior is not None else None


def kl_divergence(mu: Tensor, rho: Tensor, prior: ScalarPrior) -> Tensor:
    """Return the summed ``KL(N(mu, softplus(rho)^2) || N(loc, scale^2))`` in one pass."""
    return _KL.apply(mu, rho, prior)


class _Draw(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, mu: Tensor, rho: Tensor, mode: int, prior: ScalarPrior | None) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(mu)
        eps = torch.empty_like(mu) if mode != VARIANCE else None
        kl = _forward(mu, rho, out, eps, mode, prior)
        ctx.save_for_backward(mu, rho, eps)
        ctx.mode, ctx.prior = mode, prior
        ctx.set_materialize_grads(False)
        return out, kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_kl: Tensor | None) -> tuple[Tensor | None, ...]:
        mu, rho, eps = ctx.saved_tensors
        grad_mu, grad_rho = _backward(ctx, mu, rho, eps, ctx.mode, grad_out, grad_kl)
        return grad_mu, grad_rho, None, None


class _KL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, mu: Tensor, rho: Tensor, prior: ScalarPrior) -> Tensor:
        kl = _forward(mu, rho, None, None, _KL_ONLY, prior)
        ctx.save_for_backward(mu, rho)
        ctx.prior = prior
        return kl

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_kl: Tensor) -> tuple[Tensor | None, ...]:
        mu, rho = ctx.saved_tensors
        grad_mu, grad_rho = _backward(ctx, mu, rho, None, _KL_ONLY, None, grad_kl)
        return grad_mu, grad_rho, None


def _forward(
    mu: Tensor, rho: Tensor, out: Tensor | None, eps: Tensor | None, mode: int, prior: ScalarPrior | None
) -> Tensor:
    loc, scale = prior if prior is not None else (0.0, 1.0)
    kl = mu.new_zeros(()) if prior is None else torch.empty((), dtype=mu.dtype)
    library().tb_gaussian_forward(
        mu.data_ptr(), rho.data_ptr(), _pointer(out), _pointer(eps), mu.numel(), mode, seed(), loc, scale * scale,
        None if prior is None else kl.data_ptr(),
    )
    return kl


def _backward(
    ctx: Any, mu: Tensor, rho: Tensor, eps: Tensor | None, mode: int, grad_out: Tensor | None, grad_kl: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    need_mu, need_rho = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
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
        loc, scale = ctx.prior if ctx.prior is not None else (0.0, 1.0)
        library().tb_gaussian_backward(
            mu.data_ptr(), rho.data_ptr(), _pointer(eps), _pointer(grad_out), _pointer(grad_mu),
            _pointer(grad_rho), mu.numel(), mode, kl_grad, loc, scale * scale,
        )
    if need_mu and pass_through:
        grad_mu = grad_out
    return grad_mu, grad_rho


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()
