"""Compare a Bayesian MLP with MC dropout and a deterministic network on scikit-learn's digits.

Digits 0-7 are in distribution (split into train and test sets); digits 8 and 9 are never seen in
training and serve as out-of-distribution (OOD) inputs. All networks share the architecture, the
optimiser, the cosine-annealed learning rate (3e-3 down to 0 over the run) and the 120 epochs. The
Bayesian network follows torchbayesian's classification recipe (see the guide "Getting good
uncertainty"): `bnn.BayesianModule` with small initial posterior scales, the negative ELBO with a
tempered KL weight ``0.1 / len(train_set)``, and the Monte Carlo predictive at test time.
``--temperatures`` sets the KL temperature ``T`` (KL weight ``T / len(train_set)``; ``1`` is the
untempered ELBO); with several, the NLL on a validation fifth of the training set chooses one per
seed. ``--warmup`` adds a linear KL warm-up; ``--schedule constant`` keeps the learning rate
fixed. ``--empirical-bayes`` refits each prior's scale to its posterior every epoch
(`bnn.fit_prior_scale_`); on this data set it collapses the network, see the guide.
``--posterior`` (``flipout``, ``lrt``) and ``--prior scale-mixture`` replace the recipe's plain
weight sampling and N(0, 1) prior; neither beat it with the earlier constant learning rate (see the
guide).

For each seed the script trains the three networks and, after the last seed, prints one line per
network with the mean ± standard error over seeds of the test accuracy, negative log-likelihood
(NLL), expected calibration error (ECE, 15 bins) and three OOD scores (AUROC, AUPR with OOD as the
positive class, FPR at 95% TPR), all from the entropy of the predictive distribution; then one
line saying, per metric, whether the Bayesian network beats the deterministic one; then one line per
network from `bnn.calibration_test`, ``calibration test <network> ece=... if_calibrated=...
p_value=...``: the ECE a perfectly calibrated network with the same predicted probabilities would
get on these test digits (the ECE's floor from sampling noise alone), and the probability of an
ECE at least as large under perfect calibration (means over seeds). It writes a reliability
diagram and a histogram of the uncertainty scores (first seed) as PNG files.

Run: ``python examples/digits.py`` (about a minute on 2 CPU cores; ``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from tqdm import tqdm

from torchbayesian import bnn

IN_DISTRIBUTION = 8  # digits 0..7; 8 and 9 are out of distribution
MODELS = ("bayesian", "mc_dropout", "deterministic")
METRICS = ("accuracy", "nll", "ece", "ood_auroc", "ood_aupr", "ood_fpr95")
CALIBRATION_TEST = ("ece_if_calibrated", "ece_p_value")  # from bnn.calibration_test, printed on their own lines
HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "ece": False, "ood_auroc": True, "ood_aupr": True, "ood_fpr95": False}


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


def make_net(dropout: float = 0.0) -> nn.Module:
    """Return the MLP shared by all models, with dropout after each hidden layer if ``dropout > 0``."""
    def drop() -> list[nn.Module]:
        return [nn.Dropout(dropout)] if dropout > 0 else []

    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), *drop(), nn.Linear(128, 128), nn.ReLU(), *drop(),
                         nn.Linear(128, IN_DISTRIBUTION))


POSTERIORS = {"gaussian": bnn.GaussianPosterior, "flipout": bnn.FlipoutPosterior,
              "lrt": bnn.LocalReparameterizationPosterior}
PRIORS = {"gaussian": bnn.GaussianPrior, "scale-mixture": bnn.ScaleMixturePrior}


def make_model(name: str, *, dropout: float, sigma_init: float, posterior: str = "gaussian",
               prior: str = "gaussian") -> nn.Module:
    """Build one of ``MODELS``; the Bayesian one is the plain MLP made Bayesian with a small initial scale.

    ``posterior`` and ``prior`` name entries of `POSTERIORS` and `PRIORS` (each prior with its
    default arguments: N(0, 1), or Blundell et al.'s mixture 0.5 N(0, 1) + 0.5 N(0, 0.0025^2)).
    """
    if name == "bayesian":
        return bnn.BayesianModule(make_net(), POSTERIORS[posterior], PRIORS[prior](), sigma_init=sigma_init)
    return make_net(dropout if name == "mc_dropout" else 0.0)


def train(model: nn.Module, data: dict[str, Tensor], *, name: str, epochs: int, seed: int, warmup: float,
          empirical_bayes: bool, temperature: float = 1.0, schedule: str = "constant") -> None:
    """Train with Adam on mini-batches; the Bayesian loss is mean NLL + temperature * KL / len(train_set).

    ``schedule="cosine"`` anneals the learning rate to zero over the run (per step), for any network.
    """
    x, y = data["x_train"], data["y_train"]
    criterion = nn.CrossEntropyLoss()
    full_weight = temperature * bnn.kl_weight(len(x))
    elbo = bnn.ELBOLoss(criterion, kl_weight=full_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / 64)
    warmup_steps = int(warmup * epochs * steps_per_epoch)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch) if schedule == "cosine" else None
    progress = tqdm(range(epochs), desc=f"{name} (seed {seed})", unit="epoch", leave=False)
    model.train()
    step = 0
    for _ in progress:
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            logits = model(x[batch])
            if name == "bayesian":
                elbo.kl_weight = full_weight * bnn.linear_kl_warmup(step, warmup_steps)
                loss = elbo(logits, y[batch], kl=model)
            else:
                loss = criterion(logits, y[batch])
            loss.backward()
            optimizer.step()
            if annealing is not None:
                annealing.step()
            step += 1
        if name == "bayesian" and empirical_bayes:
            bnn.fit_prior_scale_(model)  # empirical Bayes: each prior's scale fitted to its posterior
        if name == "bayesian":
            progress.set_postfix(nll=f"{elbo.last_data_loss.item():.3f}", kl_per_example=f"{elbo.last_kl.item() / len(x):.2f}",
                                 kl_factor=f"{elbo.kl_weight / full_weight:.2f}")
        else:
            progress.set_postfix(nll=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def log_predictive_draws(model: nn.Module, x: Tensor, *, name: str, samples: int) -> Tensor:
    """Return log-probabilities of the Monte Carlo draws, ``[S, N, C]`` (``S = 1`` for the deterministic net)."""
    if name == "bayesian":
        logits = bnn.predict(model, x, num_samples=samples)
    elif name == "mc_dropout":
        with bnn.enable_mc_dropout(model):  # dropout stays stochastic in evaluation mode
            logits = bnn.predict(model, x, num_samples=samples)
    else:
        logits = model(x).unsqueeze(0)
    return logits.log_softmax(-1)


def choose_temperature(data: dict[str, Tensor], *, temperatures: list[float], epochs: int, seed: int,
                       sigma_init: float, warmup: float, samples: int, posterior: str = "gaussian",
                       prior: str = "gaussian", schedule: str = "constant") -> float:
    """Return the KL temperature with the best validation NLL, the validation set being 20% of the training set.

    Each candidate is trained on the other 80% exactly as the final network will be; the test and
    OOD inputs are never seen.
    """
    if len(temperatures) == 1:
        return temperatures[0]
    x_fit, x_val, y_fit, y_val = train_test_split(data["x_train"], data["y_train"], test_size=0.2,
                                                  random_state=seed, stratify=data["y_train"])
    fit = {"x_train": x_fit, "y_train": y_fit}
    scores = {}
    for temperature in temperatures:
        torch.manual_seed(seed)
        model = make_model("bayesian", dropout=0.0, sigma_init=sigma_init, posterior=posterior, prior=prior)
        train(model, fit, name="bayesian", epochs=epochs, seed=seed, warmup=warmup, empirical_bayes=False,
              temperature=temperature, schedule=schedule)
        probs = log_predictive_draws(model, x_val, name="bayesian", samples=samples).exp().mean(0)
        scores[temperature] = bnn.negative_log_likelihood(probs, y_val).item()
    return min(scores, key=scores.__getitem__)


def evaluate(model: nn.Module, data: dict[str, Tensor], *, name: str, samples: int,
             seed: int = 0) -> dict[str, Tensor | float]:
    """Return the metrics, predictive probabilities and uncertainty scores (predictive entropy) of one model.

    ``seed`` seeds the label draws of `bnn.calibration_test`.
    """
    test = log_predictive_draws(model, data["x_test"], name=name, samples=samples)
    ood = log_predictive_draws(model, data["x_ood"], name=name, samples=samples)
    probs = test.exp().mean(0)
    score_test, score_ood = bnn.entropy(test, from_logits=True), bnn.entropy(ood, from_logits=True)
    y = data["y_test"]
    calibration = bnn.calibration_test(probs, y, generator=torch.Generator().manual_seed(seed))
    return {
        "accuracy": (probs.argmax(-1) == y).float().mean().item(),
        "nll": bnn.negative_log_likelihood(probs, y).item(),
        "ece": bnn.expected_calibration_error(probs, y).item(),
        "ood_auroc": bnn.auroc(score_test, score_ood).item(),
        "ood_aupr": bnn.aupr(score_test, score_ood).item(),
        "ood_fpr95": bnn.fpr_at_tpr(score_test, score_ood, tpr=0.95).item(),
        "ece_if_calibrated": calibration.expected_if_calibrated.item(),
        "ece_p_value": calibration.p_value.item(),
        "probs": probs,
        "score_test": score_test,
        "score_ood": score_ood,
    }


def plot(results: dict[str, dict], y_test: Tensor, out: Path) -> list[Path]:
    """Write the reliability diagrams and the uncertainty histograms of one seed; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.6), sharey=True, squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        bnn.reliability_diagram(result["probs"], y_test, ax=ax, label="accuracy in bin")
        curve = bnn.reliability_curve(result["probs"], y_test)
        for left, accuracy, count in zip(curve.edges[:-1].tolist(), curve.accuracy.tolist(), curve.count.tolist()):
            if count:
                ax.annotate(f"{int(count)}", (left + 0.5 / len(curve.count), accuracy), ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{name}: {ax.get_title()}\n(numbers: test digits per bin)", fontsize=10)
        ax.set_ylim(0, 1.08)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
    fig.tight_layout()
    reliability = out / "reliability_diagram.png"
    fig.savefig(reliability, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.0), sharex=True, sharey=True, squeeze=False)
    top = max(max(r["score_test"].max().item(), r["score_ood"].max().item()) for r in results.values())
    bins = torch.linspace(0, top + 1e-6, 31).numpy()
    for ax, (name, result) in zip(axes[0], results.items()):
        ax.hist(result["score_test"].numpy(), bins=bins, alpha=0.6, density=True, label="test digits 0-7")
        ax.hist(result["score_ood"].numpy(), bins=bins, alpha=0.6, density=True, label="OOD digits 8-9")
        ax.set_title(f"{name} (OOD AUROC {result['ood_auroc']:.3f})", fontsize=10)
        ax.set_xlabel("predictive entropy (nats)")
        ax.set_ylabel("density")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
    fig.tight_layout()
    histogram = out / "uncertainty_histogram.png"
    fig.savefig(histogram, dpi=100)
    plt.close(fig)
    return [reliability, histogram]


def summarise(values: list[float]) -> tuple[float, float]:
    """Return the mean and its standard error (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description="Bayesian, MC dropout and deterministic MLPs on scikit-learn digits (0-7 in, 8-9 OOD).")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for each model (default 120, 6 with --quick)")
    parser.add_argument("--samples", type=int, default=None, help="Monte Carlo samples at test time (default 100, 16 with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, 1 with --quick)")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout rate of the MC dropout network")
    parser.add_argument("--warmup", type=float, default=0.0, help="fraction of training over which the KL weight rises to 1")
    parser.add_argument("--empirical-bayes", action="store_true",
                        help="refit each prior scale to its posterior every epoch (bnn.fit_prior_scale_; not in the recipe)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1],
                        help="KL temperatures (KL weight = T / N; default 0.1, the recipe's tempered posterior); "
                             "with several, the validation NLL chooses one per seed")
    parser.add_argument("--sigma-init", type=float, default=1e-3, help="initial posterior scale of the Bayesian network")
    parser.add_argument("--posterior", choices=POSTERIORS, default="gaussian",
                        help="posterior of the Bayesian network: plain weight sampling, Flipout or local reparameterization")
    parser.add_argument("--prior", choices=PRIORS, default="gaussian",
                        help="prior of the Bayesian network: N(0, 1) or the scale mixture of Blundell et al. (2015)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="cosine",
                        help="learning rate of every network: cosine-annealed from 3e-3 to 0 (default), or constant 3e-3")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--quick", action="store_true", help="reduced run for smoke tests (a few seconds)")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="directory for the PNG files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small model)")
    args = parser.parse_args()
    epochs = args.epochs or (6 if args.quick else 120)
    samples = args.samples or (16 if args.quick else 100)
    seeds = args.seeds or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    metrics: dict[str, dict[str, list[float]]] = {name: {m: [] for m in (*METRICS, *CALIBRATION_TEST)}
                                                  for name in args.models}
    paths: list[Path] = []
    chosen: list[float] = []
    for seed in range(seeds):
        data = load_data(seed)
        results = {}
        for name in args.models:
            temperature = 1.0
            if name == "bayesian":
                temperature = choose_temperature(data, temperatures=args.temperatures, epochs=epochs, seed=seed,
                                                 sigma_init=args.sigma_init, warmup=args.warmup, samples=samples,
                                                 posterior=args.posterior, prior=args.prior, schedule=args.schedule)
                chosen.append(temperature)
            torch.manual_seed(seed)
            model = make_model(name, dropout=args.dropout, sigma_init=args.sigma_init, posterior=args.posterior,
                               prior=args.prior)
            train(model, data, name=name, epochs=epochs, seed=seed, warmup=args.warmup,
                  empirical_bayes=args.empirical_bayes, temperature=temperature, schedule=args.schedule)
            results[name] = evaluate(model, data, name=name, samples=samples, seed=seed)
            for metric in (*METRICS, *CALIBRATION_TEST):
                metrics[name][metric].append(results[name][metric])
        if seed == 0:
            paths = plot(results, data["y_test"], args.out)

    print(f"train={len(data['x_train'])} test={len(data['x_test'])} ood={len(data['x_ood'])} "
          f"epochs={epochs} samples={samples} seeds={seeds}")
    if len(args.temperatures) > 1:
        print("bayesian KL temperature chosen on validation, per seed: " + " ".join(f"{t:g}" for t in chosen))
    means = {}
    for name in args.models:
        means[name] = {m: summarise(v)[0] for m, v in metrics[name].items()}
        print(name + " " + " ".join(f"{m}={summarise(metrics[name][m])[0]:.4f}±{summarise(metrics[name][m])[1]:.4f}"
                                    for m in METRICS))
    if {"bayesian", "deterministic"} <= set(args.models):
        verdict = []
        for metric in METRICS[1:]:
            bayes, plain = means["bayesian"][metric], means["deterministic"][metric]
            better = bayes > plain if HIGHER_IS_BETTER[metric] else bayes < plain
            verdict.append(f"{metric}={'yes' if better else 'no'}")
        print("bayesian better than deterministic: " + " ".join(verdict))
    for name in args.models:
        print(f"calibration test {name} ece={means[name]['ece']:.4f} "
              f"if_calibrated={summarise(metrics[name]['ece_if_calibrated'])[0]:.4f} "
              f"p_value={summarise(metrics[name]['ece_p_value'])[0]:.3f}")
    for path in paths:
        print(f"wrote {path}")
    print(f"time={time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
