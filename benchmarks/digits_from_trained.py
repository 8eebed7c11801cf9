"""Digits: a trained deterministic network made Bayesian with `bnn.to_bayesian` (MOPED), against itself.

The setting of `examples/digits.py` (digits 0-7 in distribution, 8-9 out of distribution, the MLP
64-128-128-8, Adam 3e-3, batches of 64, the predictive entropy as OOD score). For each seed the
deterministic network trains for ``--epochs``; the Bayesian one is the same network trained for
``--pretrain`` epochs, converted by ``bnn.to_bayesian(net, delta=delta, freeze=True)`` (posterior
means fixed at the trained weights, scales ``delta * |w|``, prior ``N(w, 1)``) and trained on the
ELBO (KL weight ``1 / N``) for the remaining epochs, so both see the same number of epochs. The
table has one row for the deterministic network, one for the network it was at the conversion
(``--pretrain`` epochs: the Bayesian rows' posterior means), and one per ``--deltas`` value, mean ±
standard error over the seeds, then whether each beats the deterministic network on NLL, ECE and
OOD AUROC. A Bayesian row that merely matches the converted network's row gains nothing from its
posterior: its means stopped training earlier.

Run: ``PYTHONPATH=. python benchmarks/digits_from_trained.py`` (about 2 minutes per 10 seeds and delta).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

from torchbayesian import bnn

COMPARED = ("nll", "ece", "ood_auroc")


def load_example() -> ModuleType:
    """Import ``examples/digits.py``, whose data, network, training loop and metrics this script reuses."""
    path = Path(__file__).resolve().parents[1] / "examples" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of every network")
    parser.add_argument("--pretrain", type=int, default=45, help="deterministic epochs before the conversion")
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5],
                        help="relative initial posterior scales of to_bayesian")
    parser.add_argument("--samples", type=int, default=100, help="Monte Carlo samples at test time")
    args = parser.parse_args(argv)
    if not 0 < args.pretrain < args.epochs:
        parser.error("--pretrain must be between 0 and --epochs (exclusive)")
    digits = load_example()
    torch.set_num_threads(1)
    start = time.perf_counter()
    converted = f"deterministic at the conversion ({args.pretrain} epochs)"
    names = ["deterministic", converted] + [f"to_bayesian delta={delta:g}" for delta in args.deltas]
    metrics: dict[str, dict[str, list[float]]] = {name: {m: [] for m in digits.METRICS} for name in names}

    def train(model: torch.nn.Module, data: dict, name: str, epochs: int, seed: int) -> None:
        digits.train(model, data, name=name, epochs=epochs, seed=seed, warmup=0.0, empirical_bayes=False)

    for seed in range(args.seeds):
        data = digits.load_data(seed)
        torch.manual_seed(seed)
        net = digits.make_net()
        train(net, data, "deterministic", args.pretrain, seed)
        pretrained = {key: value.clone() for key, value in net.state_dict().items()}
        train(net, data, "deterministic", args.epochs - args.pretrain, seed + 1)  # the deterministic twin goes on
        results = {"deterministic": digits.evaluate(net, data, name="deterministic", samples=1)}
        net.load_state_dict(pretrained)
        results[converted] = digits.evaluate(net, data, name="deterministic", samples=1)
        for delta, name in zip(args.deltas, names[2:]):
            torch.manual_seed(seed)
            model = bnn.to_bayesian(net, delta=delta, freeze=True)
            train(model, data, "bayesian", args.epochs - args.pretrain, seed + 1)
            results[name] = digits.evaluate(model, data, name="bayesian", samples=args.samples)
        for name, result in results.items():
            for metric in digits.METRICS:
                metrics[name][metric].append(result[metric])

    print(f"seeds={args.seeds} epochs={args.epochs} pretrain={args.pretrain} samples={args.samples}")
    print("| network | " + " | ".join(digits.METRICS) + " | better than deterministic on |")
    print("|---" * (len(digits.METRICS) + 2) + "|")
    means = {name: {m: digits.summarise(v)[0] for m, v in metrics[name].items()} for name in names}
    for name in names:
        cells = [f"{digits.summarise(v)[0]:.4f} ± {digits.summarise(v)[1]:.4f}" for v in metrics[name].values()]
        better = [m for m in COMPARED if name != "deterministic" and (
            means[name][m] > means["deterministic"][m] if digits.HIGHER_IS_BETTER[m]
            else means[name][m] < means["deterministic"][m])]
        print(f"| {name} | " + " | ".join(cells) + f" | {', '.join(better) or '-'} |")
    print(f"time={time.perf_counter() - start:.0f}s")
    return means


if __name__ == "__main__":
    main()
