"""Fit a Bayesian MLP to 1-D heteroscedastic data and plot its aleatoric and epistemic uncertainty.

The network outputs a mean and a log-variance per input and is trained with the negative ELBO
``GaussianNLLLoss(log_variance=True)`` mean + KL / len(train_set); the progress bar shows the data
term (``data_nll``, the mean Gaussian NLL) and the KL summed over all weights (``kl``) separately.
Training inputs cover [-3, -1] and [1, 3]; the plot spans [-5, 5], so epistemic uncertainty should
grow in the gap and outside the data, while aleatoric uncertainty follows the noise level, which
grows with |x|. The script writes ``regression.png`` and prints (values depend on the settings):

    steps=... samples=... train=...
    inside epistemic_std=... aleatoric_std=...
    outside epistemic_std=... aleatoric_std=...
    wrote .../regression.png

``inside`` averages over the grid points within the training range, ``outside`` over the others;
each ``*_std`` is the mean predictive standard deviation of that kind.

Run: ``python examples/regression.py`` (``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn
from tqdm import tqdm

from torchbayesian import bnn


def make_data(num_points: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample ``y = sin(2x) + noise`` with noise standard deviation ``0.05 + 0.1 |x|``."""
    side = torch.randint(0, 2, (num_points, 1), generator=generator) * 2 - 1
    x = side * (1 + 2 * torch.rand(num_points, 1, generator=generator))
    noise = (0.05 + 0.1 * x.abs()) * torch.randn(num_points, 1, generator=generator)
    return x, torch.sin(2 * x) + noise


def plot(
    x: Tensor, y: Tensor, grid: Tensor, center: Tensor, epistemic_std: Tensor, total_std: Tensor
) -> plt.Figure:
    """Return the figure: data, predictive mean and the ±2 sd epistemic and total bands; legend beside the axes."""
    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    g = grid.squeeze(-1).numpy()
    ax.fill_between(g, (center - 2 * total_std).numpy(), (center + 2 * total_std).numpy(), alpha=0.25,
                    color="tab:orange", label="±2 sd total\n(aleatoric + epistemic)")
    ax.fill_between(g, (center - 2 * epistemic_std).numpy(), (center + 2 * epistemic_std).numpy(), alpha=0.5,
                    color="tab:blue", label="±2 sd epistemic")
    ax.plot(g, center.numpy(), color="black", label="predictive mean")
    ax.plot(g, torch.sin(2 * grid).squeeze(-1).numpy(), "--", color="gray", label="true mean sin(2x)")
    ax.scatter(x.squeeze(-1).numpy(), y.squeeze(-1).numpy(), s=6, color="tab:red", alpha=0.6,
               label=f"training data ({len(x)} points)")
    ax.set_ylim(-4, 4)
    ax.set_xlabel("input x")
    ax.set_ylabel("target y")
    ax.set_title("Bayesian MLP: predictive mean with epistemic and total uncertainty bands")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
    return fig


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train, plot and print; return the printed standard deviations by region."""
    parser = argparse.ArgumentParser(description="1-D heteroscedastic regression with aleatoric and epistemic bands.")
    parser.add_argument("--steps", type=int, default=None,
                        help="full-batch training steps (default 1500, 200 with --quick)")
    parser.add_argument("--points", type=int, default=None, help="training points (default 2000, 500 with --quick)")
    parser.add_argument("--samples", type=int, default=64, help="Monte Carlo samples at prediction time")
    parser.add_argument("--quick", action="store_true", help="reduced run for smoke tests")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="directory for regression.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of the weight samples")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.quick else 1500)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    x, y = make_data(args.points or (500 if args.quick else 2000), torch.Generator().manual_seed(args.seed))
    net = nn.Sequential(nn.Linear(1, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    model = bnn.BayesianModule(net, sigma_init=1e-3)
    elbo = bnn.ELBOLoss(bnn.GaussianNLLLoss(log_variance=True), kl_weight=bnn.kl_weight(len(x)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    progress = tqdm(range(steps), desc="training", unit="step", mininterval=0.5)
    for _ in progress:
        optimizer.zero_grad()
        mean, log_var = model(x).unbind(-1)
        loss = elbo(mean, y.squeeze(-1), log_var, kl=model)
        loss.backward()
        optimizer.step()
        progress.set_postfix(data_nll=f"{elbo.last_data_loss.item():.3f}", kl=f"{elbo.last_kl.item():.0f}",
                             refresh=False)

    grid = torch.linspace(-5, 5, 401).unsqueeze(-1)
    with torch.no_grad():
        mean, log_var = bnn.predict(model, grid, num_samples=args.samples).unbind(-1)
    u = bnn.gaussian_uncertainty(mean, log_var, log_variance=True)
    center = mean.mean(dim=0)
    inside = ((grid.abs() >= 1) & (grid.abs() <= 3)).squeeze(-1)
    epistemic_std, aleatoric_std = u.epistemic.sqrt(), u.aleatoric.sqrt()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "regression.png"
    fig = plot(x, y, grid, center, epistemic_std, u.total.sqrt())
    fig.savefig(path, dpi=100)
    plt.close(fig)

    spread = {
        region: {"epistemic_std": epistemic_std[where].mean().item(),
                 "aleatoric_std": aleatoric_std[where].mean().item()}
        for region, where in (("inside", inside), ("outside", ~inside))
    }
    print(f"steps={steps} samples={args.samples} train={len(x)}")
    for region, stds in spread.items():
        print(f"{region} epistemic_std={stds['epistemic_std']:.4f} aleatoric_std={stds['aleatoric_std']:.4f}")
    print(f"wrote {path}")
    return spread


if __name__ == "__main__":
    main()
