"""Seed weight noise per process for data-parallel training."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["seed_per_rank"]


def seed_per_rank(seed: int) -> int:
    """Seed torch's generators with ``seed + rank`` so that each process draws different weight noise.

    Under ``DistributedDataParallel`` every rank holds the same variational parameters (DDP
    broadcasts them from rank 0 at wrap time and averages gradients after each backward), but
    each rank should sample its **own** weights: the averaged gradient is then a Monte Carlo
    estimate over ``world_size`` weight samples instead of ``world_size`` copies of one. Call
    this once per process after ``init_process_group`` and before training; without an
    initialised process group it uses rank 0, so a single-process run matches rank 0.

    With the loss ``nll_mean + kl / N`` on every rank (``N`` the size of the whole training
    set), DDP's gradient averaging counts the KL once: its gradient is the same on every rank
    and the average of identical terms is that term.

    With FSDP (``torch.distributed.fsdp.fully_shard``) the variational parameters are sharded
    DTensors outside the forward pass: either compute the KL inside the forward of the
    outermost FSDP unit (return it with the output), or call ``.full_tensor()`` on
    ``model.kl_divergence()``. Both give the single-process gradient.

    Args:
        seed (int): The base seed shared by all ranks.

    Returns:
        int: The seed used by this process.

    Raises:
        TypeError: If ``seed`` is not an integer.

    Example:
        >>> from torchbayesian import bnn
        >>> bnn.seed_per_rank(0)  # rank 0, or no process group
        0

        A DDP training step on every rank (``N`` is the size of the whole training set):

        ```python
        model = bnn.BayesianModule(net)
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False is fine
        bnn.seed_per_rank(seed)
        loss = F.cross_entropy(ddp(x), y) + model.kl_divergence() / N
        loss.backward()
        ```
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed_per_rank: seed must be an int, got {type(seed).__name__}.")
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    torch.manual_seed(seed + rank)
    return seed + rank
