"""Time ``bnn.predict(model, x, num_samples=S)`` against S sequential forward passes.

Both are timed in the same process, interleaved round by round, on one thread with denormals
flushed; the script prints the median time of each and their ratio for an MLP and a small CNN.

Run: ``python benchmarks/predict.py [--samples 32] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from torchbayesian import bnn


def _small_mlp() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    return net, torch.randn(64, 64)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return net, torch.randn(64, 64)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )
    return net, torch.randn(32, 1, 28, 28)


def _time(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def benchmark(name: str, build: Callable[[], tuple[nn.Module, torch.Tensor]], samples: int, rounds: int) -> None:
    """Print the median times of the loop and of ``predict`` (default and ``chunk_size=8``) and their ratios."""
    torch.manual_seed(0)
    net, x = build()
    model = bnn.BayesianModule(net).eval()

    def loop() -> torch.Tensor:
        return torch.stack([model(x) for _ in range(samples)])

    candidates: dict[str, Callable[[], object]] = {
        "loop": loop,
        "predict": lambda: bnn.predict(model, x, num_samples=samples),
        "predict(chunk_size=8)": lambda: bnn.predict(model, x, num_samples=samples, chunk_size=8),
    }
    times: dict[str, list[float]] = {label: [] for label in candidates}
    with torch.no_grad():
        reference_shape = loop().shape
        for label, function in candidates.items():
            if function().shape != reference_shape:
                raise RuntimeError(f"{label} returned the wrong shape")
        for _ in range(rounds):
            for label, function in candidates.items():
                times[label].append(_time(function))
    medians = {label: statistics.median(values) for label, values in times.items()}
    print(f"{name}: input={tuple(x.shape)} S={samples}")
    for label, median in medians.items():
        print(f"  {label:<22} {median * 1e3:9.2f} ms  ratio={median / medians['loop']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="weight samples S per prediction")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (the median is reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, 1 thread, medians of {args.rounds} interleaved rounds")
    benchmark("mlp 64-128-128-8 (the digits example)", _small_mlp, args.samples, args.rounds)
    benchmark("mlp 64-256-256-10", _mlp, args.samples, args.rounds)
    benchmark("cnn 2 conv + linear, 28x28", _cnn, args.samples, args.rounds)


if __name__ == "__main__":
    main()
