"""Train a Bayesian MLP on scikit-learn's digits and compare it with a deterministic network.

Digits 0-7 are in distribution (split into train and test sets); digits 8 and 9 are never seen in
training and serve as out-of-distribution (OOD) inputs. Both networks get the same architecture,
optimiser and number of epochs. The script prints one line of metrics per model (default
settings, seed 0, torch 2.13 on CPU):

    bayesian accuracy=0.9917 nll=0.0320 ece=0.0183 ood_auroc=0.9435
    deterministic accuracy=0.9917 nll=0.0249 ece=0.0098 ood_auroc=0.9622

``ood_auroc`` is the area under the ROC curve for telling OOD digits from in-distribution test
digits by an uncertainty score: the mutual information (epistemic uncertainty) for the Bayesian
network and the softmax entropy for the deterministic one. It also writes a reliability diagram
and a histogram of uncertainties as PNG files.

Run: ``python examples/digits.py`` (under a minute on 2 CPU cores; ``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from tqdm import tqdm

from torchbayesian import bnn

IN_DISTRIBUTION = 8  # digits 0..7; 8 and 9 are out of distribution


def load_data(seed: int) -> dict[str, Tensor]:
    """Return train/test tensors for digits 0-7 and the held-out digits 8-9 as OOD inputs."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    known = y < IN_DISTRIBUTION
    x_train, x_test, y_train, y_test = train_test_split(
        x[known], y[known], test_size=0.25, random_state=seed, stratify=y[known]
    )
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "x_ood": x[~known]}


def make_net() -> nn.Module:
    """Return the MLP shared by both models."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, IN_DISTRIBUTION))


def train(model: nn.Module, data: dict[str, Tensor], *, epochs: int, bayesian: bool, seed: int) -> None:
    """Train with Adam on mini-batches; the Bayesian loss is mean NLL + KL / len(train_set)."""
    x, y = data["x_train"], data["y_train"]
    criterion = nn.CrossEntropyLoss()
    elbo = bnn.ELBOLoss(criterion, kl_weight=bnn.kl_weight(len(x)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(range(epochs), desc="bayesian" if bayesian else "deterministic", unit="epoch")
    model.train()
    for _ in progress:
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            logits = model(x[batch])
            loss = elbo(logits, y[batch], kl=model) if bayesian else criterion(logits, y[batch])
            loss.backward()
            optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: dict[str, Tensor], *, samples: int, bayesian: bool) -> dict[str, Tensor | float]:
    """Return metrics, predictive probabilities and uncertainty scores for one model."""
    def draws(x: Tensor) -> Tensor:
        logits = bnn.predict(model, x, num_samples=samples) if bayesian else model(x).unsqueeze(0)
        return logits.log_softmax(-1)

    test, ood = draws(data["x_test"]), draws(data["x_ood"])
    probs = test.exp().mean(0)
    score = bnn.epistemic_uncertainty if bayesian else bnn.entropy
    score_test, score_ood = score(test, from_logits=True), score(ood, from_logits=True)
    labels = torch.cat([torch.zeros(len(score_test)), torch.ones(len(score_ood))])
    y = data["y_test"]
    return {
        "accuracy": (probs.argmax(-1) == y).float().mean().item(),
        "nll": bnn.negative_log_likelihood(probs, y).item(),
        "ece": bnn.expected_calibration_error(probs, y).item(),
        "ood_auroc": roc_auc_score(labels.numpy(), torch.cat([score_test, score_ood]).numpy()),
        "probs": probs,
        "score_test": score_test,
        "score_ood": score_ood,
    }


def plot(results: dict[str, dict], y_test: Tensor, out: Path) -> list[Path]:
    """Write the reliability diagrams and the uncertainty histograms; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, (name, result) in zip(axes, results.items()):
        bnn.reliability_diagram(result["probs"], y_test, ax=ax, label=name)
        ax.set_title(f"{name}: {ax.get_title()}")
    fig.tight_layout()
    reliability = out / "reliability_diagram.png"
    fig.savefig(reliability, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    titles = {"bayesian": "Bayesian: mutual information", "deterministic": "deterministic: softmax entropy"}
    for ax, (name, result) in zip(axes, results.items()):
        ax.hist(result["score_test"].numpy(), bins=30, alpha=0.6, density=True, label="test digits 0-7")
        ax.hist(result["score_ood"].numpy(), bins=30, alpha=0.6, density=True, label="OOD digits 8-9")
        ax.set_title(f"{titles[name]} (AUROC {result['ood_auroc']:.2f})")
        ax.set_xlabel("nats")
        ax.legend()
    fig.tight_layout()
    histogram = out / "uncertainty_histogram.png"
    fig.savefig(histogram, dpi=100)
    plt.close(fig)
    return [reliability, histogram]


def main() -> None:
    parser = argparse.ArgumentParser(description="Bayesian vs deterministic MLP on scikit-learn digits (0-7 in, 8-9 OOD).")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for each model (default 60, 6 with --quick)")
    parser.add_argument("--samples", type=int, default=None, help="Monte Carlo samples at test time (default 64, 16 with --quick)")
    parser.add_argument("--quick", action="store_true", help="reduced run for smoke tests (a few seconds)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="directory for the PNG files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small model)")
    args = parser.parse_args()
    epochs = args.epochs or (6 if args.quick else 60)
    samples = args.samples or (16 if args.quick else 64)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    data = load_data(args.seed)
    results = {}
    for name in ("bayesian", "deterministic"):
        torch.manual_seed(args.seed)
        net = make_net()
        model = bnn.BayesianModule(net, sigma_init=1e-3) if name == "bayesian" else net
        train(model, data, epochs=epochs, bayesian=name == "bayesian", seed=args.seed)
        results[name] = evaluate(model, data, samples=samples, bayesian=name == "bayesian")
    paths = plot(results, data["y_test"], args.out)

    print(f"train={len(data['x_train'])} test={len(data['x_test'])} ood={len(data['x_ood'])} "
          f"epochs={epochs} samples={samples}")
    for name, result in results.items():
        print(f"{name} accuracy={result['accuracy']:.4f} nll={result['nll']:.4f} "
              f"ece={result['ece']:.4f} ood_auroc={result['ood_auroc']:.4f}")
    for path in paths:
        print(f"wrote {path}")
    print(f"time={time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
