"""UCI regression benchmark: torchbayesian's recipe against a deterministic network and MC dropout.

The standard protocol of Hernandez-Lobato & Adams (2015) on any data set in the layout of the
MC dropout experiments' ``UCI_Datasets`` folder (``data.txt``, ``index_features.txt``,
``index_target.txt``, ``index_train_K.txt``, ``index_test_K.txt``, directly in the data set's
folder or in its ``data`` sub-folder as in that repository): one hidden layer of 50 ReLU units
(100 for protein, or the number in ``n_hidden.txt`` when the folder has one; ``--hidden``
overrides), inputs and targets standardised with each training split's statistics, Adam,
mini-batches of 32, a (mean, log-variance) output. Reported in
the original units: the test RMSE of the predictive mean and the average test log-likelihood of the
predictive mixture ``log (1/S) sum_s N(y; mu_s, sigma_s^2)``, mean ± standard error over splits.

Every method gets the same per-split model selection: the last ``--validation`` fraction of each
training split (after a seeded shuffle) is held out, each candidate setting (the method's own
options, each with every learning rate of ``--lr``) is trained on the rest and scored by
validation log-likelihood every ``--eval-every`` epochs; the best (setting, epoch) is then
retrained on the whole training split, which is the only model that sees the test part. The
method's own options: for the recipe, a predicted log-variance or one learned noise level; for MC
dropout, the dropout rate.

For speed on CPU, the networks of all splits and settings are trained together as one stacked
model (`benchmarks/_stacked.py`): its tensors carry a leading "network" dimension and every network
has its own data, mini-batches and loss, so the result equals separate runs while the Python
overhead per step is paid once. The Bayesian network is that model made Bayesian by
`bnn.BayesianModule` with the recipe of `benchmarks/_recipe.py`.

Run: ``PYTHONPATH=. python benchmarks/uci.py --data-dir ../shared/datasets/uci --dataset energy``.
After the table it prints one JSON line per method:
``{"method", "dataset", "splits", "rmse", "rmse_se", "ll", "ll_se"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import _recipe, _stacked

METHODS = ("torchbayesian", "mc_dropout", "deterministic")


def dataset_folder(data_dir: Path, dataset: str) -> Path:
    """The folder holding ``data.txt``: ``data_dir / dataset``, or its ``data`` sub-folder (the UCI_Datasets repository)."""
    for folder in (data_dir / dataset, data_dir / dataset / "data"):
        if (folder / "data.txt").is_file():
            return folder
    raise FileNotFoundError(
        f"uci.py: no data.txt in {data_dir / dataset} or {data_dir / dataset / 'data'}; expected the UCI_Datasets layout."
    )


def default_hidden(folder: Path, dataset: str) -> int:
    """The protocol's hidden units: ``n_hidden.txt`` when present, else 100 for protein and 50 otherwise."""
    if (folder / "n_hidden.txt").is_file():
        return int(_read_numbers(folder / "n_hidden.txt", flat=True)[0])
    return 100 if "protein" in dataset.lower() else 50


def load_splits(data_dir: Path, dataset: str, splits: int | None) -> list[dict[str, Tensor]]:
    """Return one dict per split with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (float64, raw units)."""
    folder = dataset_folder(data_dir, dataset)
    data = torch.tensor(_read_numbers(folder / "data.txt"), dtype=torch.float64)
    features = [int(i) for i in _read_numbers(folder / "index_features.txt", flat=True)]
    target = int(_read_numbers(folder / "index_target.txt", flat=True)[0])
    available = 0
    while (folder / f"index_train_{available}.txt").is_file():
        available += 1
    if available == 0:
        raise FileNotFoundError(f"uci.py: no index_train_0.txt in {folder}.")
    count = available if splits is None else min(splits, available)
    result = []
    for k in range(count):
        train = torch.tensor([int(i) for i in _read_numbers(folder / f"index_train_{k}.txt", flat=True)])
        test = torch.tensor([int(i) for i in _read_numbers(folder / f"index_test_{k}.txt", flat=True)])
        x, y = data[:, features], data[:, target]
        result.append({"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]})
    return result


def _read_numbers(path: Path, *, flat: bool = False) -> list:
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines() if line.strip()]
    return [v for row in rows for v in row] if flat else rows


def summarise(values: list[float]) -> tuple[float, float]:
    """Return the mean and its standard error (sample standard deviation / sqrt(n))."""
    t = torch.tensor(values, dtype=torch.float64)
    se = t.std(correction=1).item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return t.mean().item(), se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding one sub-folder per data set")
    parser.add_argument("--dataset", required=True, help="sub-folder name, e.g. bostonHousing, concrete, energy, yacht")
    parser.add_argument("--splits", type=int, default=None, help="use the first K splits (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to run, all by default")
    parser.add_argument("--hidden", type=int, default=None,
                        help="hidden units (default: n_hidden.txt if present, else 100 for protein and 50 otherwise)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs (default: about 16,000 optimiser steps, between 40 and 2,000 epochs)")
    parser.add_argument("--eval-every", type=int, default=None, help="epochs between validation checks (default epochs / 40)")
    parser.add_argument("--validation", type=float, default=0.2, help="fraction of each training split for model selection")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size of every method")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3],
                        help="Adam learning rates, chosen per split on validation for every method")
    parser.add_argument("--test-samples", type=int, default=1000, help="Monte Carlo samples for the test predictive")
    parser.add_argument("--sigma-init", type=float, default=_recipe.Recipe.sigma_init, help="recipe: initial posterior std")
    parser.add_argument("--prior-scale", type=float, default=_recipe.Recipe.prior_scale, help="recipe: prior std")
    parser.add_argument("--fan-in-prior", action="store_true", help="recipe: divide the prior std by sqrt(fan_in)")
    parser.add_argument("--warmup", type=float, default=_recipe.Recipe.warmup, help="recipe: fraction of steps of KL warm-up")
    parser.add_argument("--empirical-bayes", action="store_true",
                        help="recipe: refit each prior scale to its posterior every epoch (bnn.fit_prior_scale_)")
    parser.add_argument("--noise", nargs="+", default=list(_recipe.Recipe.noise),
                        choices=("heteroscedastic", "homoscedastic"),
                        help="recipe: noise models, chosen per split on validation when several are given")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(_recipe.Recipe.temperatures),
                        help="recipe: KL temperatures T (KL weight T / N), chosen per split on validation when several")
    parser.add_argument("--posterior", choices=sorted(_recipe.POSTERIORS), default=_recipe.Recipe.posterior,
                        help="recipe: weight sampling (gaussian) or local reparameterization (lrt)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the validation shuffles, the initialisation and the weight samples")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    splits = load_splits(args.data_dir, args.dataset, args.splits)
    hidden = args.hidden or default_hidden(dataset_folder(args.data_dir, args.dataset), args.dataset)
    n_train = len(splits[0]["y_train"])
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    epochs = args.epochs or max(40, min(2000, round(16_000 / steps_per_epoch / 10) * 10))
    eval_every = args.eval_every or max(1, epochs // 40)
    settings = _stacked.TrainSettings(epochs=epochs, eval_every=eval_every, batch_size=args.batch_size,
                                      validation=args.validation, test_samples=args.test_samples, lrs=tuple(args.lr),
                                      hidden=hidden, seed=args.seed,
                                      recipe=_recipe.Recipe(args.sigma_init, args.prior_scale, args.fan_in_prior, args.warmup,
                                                            args.empirical_bayes, tuple(args.noise),
                                                            tuple(args.temperatures), args.posterior))
    print(f"recipe: {settings.recipe}")
    print(f"dataset={args.dataset} splits={len(splits)} train={n_train} test={len(splits[0]['y_test'])} "
          f"features={splits[0]['x_train'].shape[1]} hidden={hidden} epochs<={epochs} eval_every={eval_every} "
          f"validation={args.validation} test_samples={args.test_samples} lr={args.lr}", flush=True)

    rows = []
    for method in args.methods:
        begun = time.perf_counter()
        results = _stacked.run_method(method, splits, settings)
        rmse, rmse_se = summarise([r["rmse"] for r in results])
        ll, ll_se = summarise([r["ll"] for r in results])
        chosen = ", ".join(sorted({r["chosen"] for r in results}))
        rows.append({"method": method, "dataset": args.dataset, "splits": len(splits),
                     "rmse": rmse, "rmse_se": rmse_se, "ll": ll, "ll_se": ll_se})
        by_samples = ", ".join(f"{s}: {summarise([r['ll_by_samples'][i] for r in results])[0]:.3f}"
                               for i, s in enumerate(_stacked.SAMPLE_COUNTS))
        stop = summarise([float(r["epochs"]) for r in results])[0]
        print(f"{method}: rmse={rmse:.3f}±{rmse_se:.3f} ll={ll:.3f}±{ll_se:.3f} "
              f"({time.perf_counter() - begun:.0f}s; chosen: {chosen}; mean epochs {stop:.0f}; "
              f"ll with fewer test samples {by_samples})", flush=True)

    print()
    print(f"| method | RMSE | test log-likelihood |  ({args.dataset}, {len(splits)} splits)")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['rmse']:.2f} ± {row['rmse_se']:.2f} | {row['ll']:.2f} ± {row['ll_se']:.2f} |")
    for row in rows:
        print(json.dumps(row))
    print(f"time={time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
