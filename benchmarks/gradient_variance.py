"""Gradient variance and step time of weight sampling, local reparameterization and Flipout.

An MLP 784-400-400-10 is trained on one fixed synthetic mini-batch: image-like inputs uniform in
[0, 1] (or, with ``--inputs gaussian``, standard normal), labels from a fixed random teacher. With
the data and the variational parameters fixed, the only randomness left in the mini-batch gradient
is the estimator's noise, so its variance over repeated forward/backward passes is the estimator's
gradient variance. The script reports, for the first layer's ``mu`` and ``rho``, that variance
(averaged over elements) and its ratio to plain weight sampling (one weight sample shared by the
batch), and the median time of a training step (forward, ELBO, backward) relative to the
deterministic network, with all variants interleaved.

Run: ``python benchmarks/gradient_variance.py`` (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbayesian import bnn

VARIANTS = {
    "weight sampling": bnn.GaussianPosterior,
    "local reparameterization": bnn.LocalReparameterizationPosterior,
    "Flipout": bnn.FlipoutPosterior,
}


def _network() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10))


def _data(batch: int, kind: str) -> tuple[Tensor, Tensor]:
    inputs = torch.rand(batch, 784) if kind == "uniform" else torch.randn(batch, 784)
    teacher = nn.Linear(784, 10)
    with torch.no_grad():
        labels = teacher(inputs).argmax(-1)
    return inputs, labels


def _loss(model: nn.Module, inputs: Tensor, labels: Tensor, train_size: int) -> Tensor:
    loss = F.cross_entropy(model(inputs), labels)
    if isinstance(model, bnn.BayesianModule):
        loss = loss + model.kl_divergence() / train_size
    return loss


def _gradient_variance(model: bnn.BayesianModule, inputs: Tensor, labels: Tensor, repeats: int) -> dict[str, float]:
    first = dict(model.posteriors())["0.weight"]
    gradients: dict[str, list[Tensor]] = {"mu": [], "rho": []}
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        _loss(model, inputs, labels, train_size=60_000).backward()
        gradients["mu"].append(first.mu.grad.clone())
        gradients["rho"].append(first.rho.grad.clone())
    return {name: torch.stack(values).var(0).mean().item() for name, values in gradients.items()}


def _step_times(models: dict[str, nn.Module], inputs: Tensor, labels: Tensor, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(rounds + 3):
        for name, model in models.items():
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            _loss(model, inputs, labels, train_size=60_000).backward()
            if round_index >= 3:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="examples in the fixed mini-batch")
    parser.add_argument("--inputs", choices=["uniform", "gaussian"], default="uniform",
                        help="uniform: image-like inputs in [0, 1]; gaussian: standard normal inputs")
    parser.add_argument("--sigma", type=float, default=0.05, help="initial posterior standard deviation")
    parser.add_argument("--repeats", type=int, default=200, help="forward/backward passes per variance")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = _network()
    inputs, labels = _data(args.batch, args.inputs)
    models: dict[str, nn.Module] = {"deterministic": network}
    for name, posterior in VARIANTS.items():
        models[name] = bnn.BayesianModule(copy.deepcopy(network), posterior, sigma_init=args.sigma)

    variances = {name: _gradient_variance(models[name], inputs, labels, args.repeats) for name in VARIANTS}
    times = _step_times(models, inputs, labels, args.rounds)

    baseline = variances["weight sampling"]
    print(
        f"MLP 784-400-400-10, {args.inputs} inputs, batch {args.batch}, sigma_init {args.sigma}, "
        f"{args.repeats} passes per variance, "
        f"median of {args.rounds} interleaved steps, torch {torch.__version__}, 1 thread\n"
    )
    print(
        "| estimator | Var grad mu (layer 1) | reduction | Var grad rho (layer 1) | reduction | step time | vs deterministic |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| deterministic | - | - | - | - | {times['deterministic'] * 1e3:.1f} ms | 1.00x |")
    for name in VARIANTS:
        mu, rho = variances[name]["mu"], variances[name]["rho"]
        print(
            f"| {name} | {mu:.3e} | {baseline['mu'] / mu:.1f}x | {rho:.3e} | {baseline['rho'] / rho:.1f}x "
            f"| {times[name] * 1e3:.1f} ms | {times[name] / times['deterministic']:.2f}x |"
        )


if __name__ == "__main__":
    main()
