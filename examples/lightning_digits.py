"""Train a Bayesian MLP on scikit-learn's digits with PyTorch Lightning, beside an MC-dropout baseline.

Digits 0-7 are in distribution (split into train, validation and test sets); digits 8 and 9 are
never seen in training and serve as the out-of-distribution (OOD) loader. Both models are trained
by `bnn.BayesianLightningModule` with the library's classification recipe (learning rate
cosine-annealed to zero, KL weight ``0.1 / N``; the MC-dropout network has no posterior, so its
KL is zero) with Lightning's progress bar (the data NLL, the KL and the loss apart), validated every epoch, and
tested with Monte Carlo predictions. The script prints one line of test metrics per model:

    bayesian accuracy=... nll=... ece=... ood_auroc=...
    mc_dropout accuracy=... nll=... ece=... ood_auroc=...

``ood_auroc`` separates the OOD digits from the test digits by the predictive entropy. The
numbers come from one seed; they are a smoke check of the pipeline, not a comparison of methods
(``examples/digits.py`` compares the models).

Run: ``python examples/lightning_digits.py`` (about a minute on 2 CPU cores, 40 epochs per model; ``--quick`` for a
smoke test). Needs ``pip install torchbayesian[lightning,examples]``.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchbayesian import bnn

IN_DISTRIBUTION = 8  # digits 0..7; 8 and 9 are out of distribution


def loaders(seed: int, batch_size: int = 64) -> dict[str, DataLoader]:
    """Return the training, validation, test and OOD dataloaders."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    known = y < IN_DISTRIBUTION
    x_train, x_rest, y_train, y_rest = train_test_split(
        x[known], y[known], test_size=0.4, random_state=seed, stratify=y[known]
    )
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    generator = torch.Generator().manual_seed(seed)
    return {
        "train": DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator),
        "val": DataLoader(TensorDataset(x_val, y_val), batch_size=256),
        "test": DataLoader(TensorDataset(x_test, y_test), batch_size=256),
        "ood": DataLoader(TensorDataset(x[~known]), batch_size=256),
    }


def make_net(dropout: float = 0.0) -> nn.Module:
    """Return the MLP shared by both models (with dropout for the MC-dropout baseline)."""
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, IN_DISTRIBUTION),
    )


def run(name: str, data: dict[str, DataLoader], *, epochs: int, samples: int, seed: int) -> dict[str, float]:
    """Train one model with Lightning and return its test metrics."""
    L.seed_everything(seed, verbose=False)
    if name == "bayesian":
        model = bnn.BayesianModule(make_net(), sigma_init=1e-3)
    else:
        model = make_net(dropout=0.2)
        bnn.enable_mc_dropout(model)  # dropout stays on in validation and test: the MC-dropout predictive
    # The classification recipe of the guide "Getting good uncertainty": a cosine-annealed learning rate and the
    # KL weight tempered to 0.1 / N (the MC-dropout network has no KL, so only the schedule applies to it).
    module = bnn.BayesianLightningModule(model, num_samples=samples, lr=3e-3, kl_temperature=0.1, lr_schedule="cosine")
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False,
    )
    print(f"--- {name}")
    trainer.fit(module, data["train"], val_dataloaders=[data["val"], data["ood"]])
    results = trainer.test(module, dataloaders=[data["test"], data["ood"]], verbose=False)
    return {key.removeprefix("test/"): value for key, value in results[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Bayesian MLP and MC dropout on digits with PyTorch Lightning.")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 40, 3 with --quick)")
    parser.add_argument("--samples", type=int, default=None, help="Monte Carlo samples (default 32, 8 with --quick)")
    parser.add_argument("--quick", action="store_true", help="reduced run for smoke tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.quick else 40)
    samples = args.samples or (8 if args.quick else 32)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = loaders(args.seed)
    results = {name: run(name, data, epochs=epochs, samples=samples, seed=args.seed)
               for name in ("bayesian", "mc_dropout")}
    print(f"train={len(data['train'].dataset)} test={len(data['test'].dataset)} ood={len(data['ood'].dataset)} "
          f"epochs={epochs} samples={samples}")
    for name, metrics in results.items():
        print(f"{name} accuracy={metrics['accuracy']:.4f} nll={metrics['nll']:.4f} "
              f"ece={metrics['ece']:.4f} ood_auroc={metrics['ood_auroc']:.4f}")
    print(f"time={time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
