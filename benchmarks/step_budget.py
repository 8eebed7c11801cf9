"""Where the Bayesian training step's time goes, and the lowest step ratio plain Adam leaves.

A mean-field Gaussian model trains two tensors (``mu`` and ``rho``) per weight, so plain
`torch.optim.Adam` does twice the deterministic network's optimizer work whatever the sampling
costs. This script times, in one process and interleaved (median of ``--steps`` repetitions each):

- the deterministic step (forward, cross-entropy, backward, Adam) and the Bayesian one (the loop a
  user writes: ``cross_entropy(model(x), y) + model.kl_divergence() / N``);
- Adam's step alone on each model's parameters, gradients in place;
- a memory-bound reference: ``torch.add(a, b, out=c)`` over as many elements as the model has weights.

It prints each time, what is left for drawing, its backward and the KL, the ratio the Bayesian step would have if drawing and its backward were free
(``(deterministic + Adam on 2P - Adam on P) / deterministic``), and the time drawing and its
backward need at least: one read of ``mu`` and ``rho`` and one write of the sample, then a read of
``mu``, ``rho``, the sample and its gradient and a write of both gradients, 9 float32 transfers
per weight, at the bandwidth of the reference.

Run: ``PYTHONPATH=. python benchmarks/step_budget.py`` (MLP 784-1200-1200-10, batch 128, one thread).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.train_step import DATASET_SIZE, _mlp
from torchbayesian import bnn

TRANSFERS_PER_WEIGHT = 9  # float32 reads and writes of one draw and its backward (see the module docstring)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          bayesian: bool) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if bayesian:
            loss = loss + model.kl_divergence() / DATASET_SIZE
        loss.backward()
        optimizer.step()

    return step


def _median_ms(functions: dict[str, Callable[[], None]], repetitions: int) -> dict[str, float]:
    """Median wall time of each function in milliseconds, the functions taking turns."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repetitions):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed repetitions of each measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    deterministic = _mlp()
    bayesian = bnn.BayesianModule(_mlp())
    optimizers = {"deterministic": torch.optim.Adam(deterministic.parameters(), lr=1e-3),
                  "bayesian": torch.optim.Adam(bayesian.parameters(), lr=1e-3)}
    steps = {"deterministic": _step(deterministic, optimizers["deterministic"], x, y, bayesian=False),
             "bayesian": _step(bayesian, optimizers["bayesian"], x, y, bayesian=True)}
    for step in steps.values():  # warm up, and leave gradients for the optimizer-only timings
        step()
        step()
    weights = sum(p.numel() for p in deterministic.parameters())
    a, b, c = torch.randn(weights), torch.randn(weights), torch.empty(weights)
    times = _median_ms({
        "deterministic step": steps["deterministic"],
        "Bayesian step": steps["bayesian"],
        "Adam on P": optimizers["deterministic"].step,
        "Adam on 2P": optimizers["bayesian"].step,
        "add over P": lambda: torch.add(a, b, out=c),
    }, args.steps)
    bandwidth = 3 * 4 * weights / (times["add over P"] / 1e3)  # bytes per second
    draw_floor_ms = 1e3 * TRANSFERS_PER_WEIGHT * 4 * weights / bandwidth
    det = times["deterministic step"]
    adam_extra = times["Adam on 2P"] - times["Adam on P"]
    print(f"MLP 784-1200-1200-10, batch 128, {weights:,} weights (P), {args.threads} thread(s), "
          f"median of {args.steps}")
    for name, value in times.items():
        print(f"{name:>20}: {value:7.2f} ms")
    print(f"bandwidth of the add: {bandwidth / 1e9:.1f} GB/s")
    print(f"Bayesian / deterministic step: {times['Bayesian step'] / det:.2f}")
    print(f"with free draws (deterministic + Adam's extra {adam_extra:.1f} ms): {(det + adam_extra) / det:.2f}")
    print(f"draws and their backward at that bandwidth ({draw_floor_ms:.1f} ms) on top: "
          f"{(det + adam_extra + draw_floor_ms) / det:.2f}")
    sampling = times["Bayesian step"] - det - adam_extra
    print(f"measured draws, their backward and the KL (Bayesian - deterministic - Adam's extra): {sampling:.1f} ms, "
          f"{1e6 * sampling / weights:.1f} ns per weight")


if __name__ == "__main__":
    main()
