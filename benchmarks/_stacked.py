"""Train many small regression networks as one stacked model, with per-network model selection.

Used by `benchmarks/uci.py`. Network ``n`` of a `StackedMLP` has its own weights (slice ``n`` of
each tensor), its own training data and mini-batches, and its term of the loss, so training them
together gives the same networks as training each alone, for one step's Python overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import _recipe
from torchbayesian import bnn

LOG_2PI = math.log(2 * math.pi)
SAMPLE_COUNTS = (1, 10, 100)  # test log-likelihood also reported with these numbers of Monte Carlo samples
EVALUATION_ELEMENTS = 2**27
"""Hidden activations (samples x networks x points x units) one evaluation pass may hold: 512 MB in
float32. Larger evaluations (MC dropout with 1,000 samples on protein or year) run in several passes."""


@dataclass(frozen=True)
class TrainSettings:
    """Protocol settings shared by every method."""

    epochs: int
    eval_every: int
    batch_size: int
    validation: float
    test_samples: int
    hidden: int
    seed: int
    lrs: tuple[float, ...] = (1e-3,)
    recipe: _recipe.Recipe = field(default_factory=_recipe.Recipe)
    validation_samples: int = 32


@dataclass
class Candidate:
    """One hyper-parameter setting of a method, applied to one network of the stack."""

    name: str
    heteroscedastic: bool = True
    dropout: float = 0.0
    lr: float = 1e-3
    temperature: float = 1.0


class StackedLinear(nn.Module):
    """``networks`` affine layers in one module: ``[networks, batch, in]`` to ``[networks, batch, out]``.

    Weights ``[networks, in, out]`` and biases ``[networks, 1, out]`` start as `torch.nn.Linear`'s,
    uniform in ``±1/sqrt(in)``. Registered with `bnn.register_estimator`, so that Flipout and local
    reparameterization posteriors apply to it.
    """

    def __init__(self, networks: int, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_uniform(networks, inputs, outputs, fan_in=inputs))
        self.bias = nn.Parameter(_uniform(networks, 1, outputs, fan_in=inputs))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@bnn.register_estimator(StackedLinear)
def _stacked_linear_kernel(layer: StackedLinear, x: Tensor) -> bnn.LayerOp:
    return bnn.LayerOp(lambda inputs, weight, bias: torch.baddbmm(bias, inputs, weight), channel_dim=-1)


class StackedMLP(nn.Module):
    """``networks`` one-hidden-layer ReLU MLPs in one module: input ``[networks, batch, features]``.

    Returns the predicted mean and log-variance, each ``[networks, batch]``. A heteroscedastic
    network predicts its log-variance; a homoscedastic one learns a single ``log_noise``. Each
    network may apply dropout (kept active in evaluation: MC dropout) to its input and hidden units.
    """

    def __init__(self, networks: int, inputs: int, hidden: int, *, heteroscedastic: Tensor, dropout: Tensor) -> None:
        super().__init__()
        self.inputs, self.hidden_units = inputs, hidden
        self.hidden = StackedLinear(networks, inputs, hidden)
        self.output = StackedLinear(networks, hidden, 2)
        self.log_noise = nn.Parameter(torch.full((networks, 1), -2.0))
        self.register_buffer("heteroscedastic", heteroscedastic.reshape(networks, 1))
        self.register_buffer("keep", (1.0 - dropout).reshape(networks, 1, 1))
        self.uses_dropout = bool((dropout > 0).any())

    def fan_in(self, name: str) -> int:
        """Fan-in of tensor ``name`` (its layer's number of inputs)."""
        return self.inputs if name.startswith("hidden.") else self.hidden_units

    def _drop(self, x: Tensor) -> Tensor:
        if not self.uses_dropout:
            return x
        return x * (torch.rand_like(x) < self.keep) / self.keep

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.output(self._drop(torch.relu(self.hidden(self._drop(x)))))
        log_var = torch.where(self.heteroscedastic, out[..., 1], self.log_noise.expand_as(out[..., 1]))
        return out[..., 0], log_var


def _uniform(*shape: int, fan_in: int) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


def candidates(method: str, recipe: _recipe.Recipe, lrs: tuple[float, ...] = (1e-3,)) -> list[Candidate]:
    """The settings each method chooses from on validation data: its own options, each with every learning rate."""
    if method == "torchbayesian":
        noise_models = [Candidate(noise, heteroscedastic=noise == "heteroscedastic") for noise in recipe.noise]
        options = _with_each(noise_models, "temperature", recipe.temperatures, "T")
    elif method == "mc_dropout":
        options = [Candidate(f"p={p}", dropout=p) for p in (0.01, 0.05, 0.1)]
    elif method == "deterministic":
        options = [Candidate("deterministic")]
    else:
        raise ValueError(f"unknown method {method!r}")
    return _with_each(options, "lr", lrs, "lr")


def _with_each(options: list[Candidate], field: str, values: tuple[float, ...], label: str) -> list[Candidate]:
    """Every option with every value of ``field``, named ``"<name>, <label>=<value>"`` when there are several."""
    if len(values) == 1:
        return [replace(option, **{field: values[0]}) for option in options]
    return [replace(option, name=f"{option.name}, {label}={value:g}", **{field: value})
            for option in options for value in values]


def run_method(method: str, splits: list[dict[str, Tensor]], settings: TrainSettings) -> list[dict[str, Any]]:
    """Select each split's setting and epoch on validation data, retrain on the training split, test once."""
    options = candidates(method, settings.recipe, settings.lrs)
    generator = torch.Generator().manual_seed(settings.seed)
    fit_parts, validation_parts = [], []
    for split in splits:
        n = len(split["y_train"])
        order = torch.randperm(n, generator=generator)
        n_val = max(1, round(settings.validation * n))
        fit_parts.append(_part(split, order[: n - n_val]))
        validation_parts.append(_part(split, order[n - n_val:]))
    # Phase 1: every (candidate, split) network trained on the fit part, scored on validation.
    chosen = [(c, s) for c in range(len(options)) for s in range(len(splits))]
    history = _train_grouped(method, [options[c] for c, _ in chosen], [fit_parts[s] for _, s in chosen],
                             [validation_parts[s] for _, s in chosen], settings, stop=None)
    epochs_seen = history.shape[0]
    per_candidate = history.reshape(epochs_seen, len(options), len(splits))
    flat = per_candidate.permute(2, 1, 0).reshape(len(splits), -1)  # [split, candidate * checks]
    best = flat.argmax(dim=1)
    best_candidate, best_check = best // epochs_seen, best % epochs_seen
    stop = [(int(e) + 1) * settings.eval_every for e in best_check]
    # Phase 2: retrain each split's chosen setting on its whole training split, stop at its epoch.
    train_parts = [_part(split, torch.arange(len(split["y_train"]))) for split in splits]
    test_parts = [{"x": split["x_test"], "y": split["y_test"]} for split in splits]
    picked = [options[int(c)] for c in best_candidate]
    scores = _train_grouped(method, picked, train_parts, test_parts, settings, stop=stop)
    return [{"rmse": float(row[0]), "ll": float(row[1]), "ll_by_samples": row[2:], "epochs": epochs, "chosen": option.name}
            for row, option, epochs in zip(scores.tolist(), picked, stop)]


def _train_grouped(method: str, options: list[Candidate], train: list[dict[str, Tensor]],
                   evaluate: list[dict[str, Tensor]], settings: TrainSettings, *, stop: list[int] | None) -> Tensor:
    """`_train`, with one stacked model (and one Adam) per learning rate and KL temperature; results in
    the order of ``options``."""
    groups = sorted({(option.lr, option.temperature) for option in options})
    if len(groups) == 1:
        return _train(method, options, train, evaluate, settings, stop=stop)
    network_dim = 1 if stop is None else 0  # validation history [checks, networks]; test scores [networks, k]
    result: Tensor | None = None
    for group in groups:
        index = [i for i, option in enumerate(options) if (option.lr, option.temperature) == group]
        part = _train(method, [options[i] for i in index], [train[i] for i in index], [evaluate[i] for i in index],
                      settings, stop=None if stop is None else [stop[i] for i in index])
        if result is None:
            shape = list(part.shape)
            shape[network_dim] = len(options)
            result = part.new_empty(shape)
        result.index_copy_(network_dim, torch.tensor(index), part)
    return result


def _part(split: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {"x": split["x_train"][index], "y": split["y_train"][index]}


def _stack(parts: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack parts of possibly different sizes into ``[networks, n_max, ...]`` with a validity mask."""
    n_max = max(len(p["y"]) for p in parts)
    x = torch.zeros(len(parts), n_max, parts[0]["x"].shape[1], dtype=torch.float64)
    y = torch.zeros(len(parts), n_max, dtype=torch.float64)
    mask = torch.zeros(len(parts), n_max, dtype=torch.bool)
    for i, p in enumerate(parts):
        n = len(p["y"])
        x[i, :n], y[i, :n], mask[i, :n] = p["x"], p["y"], True
    return x, y, mask


def _train(method: str, options: list[Candidate], train: list[dict[str, Tensor]], evaluate: list[dict[str, Tensor]],
           settings: TrainSettings, *, stop: list[int] | None) -> Tensor:
    """Train one network per entry (all with the learning rate and KL temperature of ``options[0]``);
    return validation LL per check ``[checks, networks]`` or, with ``stop``, test ``(rmse, ll)`` per
    network ``[networks, 2]`` at each network's stopping epoch."""
    torch.manual_seed(settings.seed)
    x, y, mask = _stack(train)
    counts = mask.sum(1)
    x_mean = (x * mask[..., None]).sum(1, keepdim=True) / counts[:, None, None]
    x_std = ((x - x_mean).square() * mask[..., None]).sum(1, keepdim=True).div(counts[:, None, None] - 1).sqrt()
    x_std = torch.where(x_std > 0, x_std, torch.ones_like(x_std))
    y_mean = (y * mask).sum(1, keepdim=True) / counts[:, None]
    y_std = ((y - y_mean).square() * mask).sum(1, keepdim=True).div(counts[:, None] - 1).sqrt()
    x_fit = ((x - x_mean) / x_std).float()
    y_fit = ((y - y_mean) / y_std).float()
    x_eval, y_eval, eval_mask = _stack(evaluate)
    x_eval = ((x_eval - x_mean) / x_std).float()

    networks = len(options)
    net = StackedMLP(networks, x.shape[2], settings.hidden,
                     heteroscedastic=torch.tensor([o.heteroscedastic for o in options]),
                     dropout=torch.tensor([o.dropout for o in options]))
    bayesian = method == "torchbayesian"
    model = _recipe.make_bayesian(net, settings.recipe) if bayesian else net
    optimizer = torch.optim.Adam(model.parameters(), lr=options[0].lr)
    n_ref = int(counts.max())
    data_weight = (counts / n_ref).float()
    steps = math.ceil(n_ref / settings.batch_size)
    epochs = settings.epochs if stop is None else max(stop)
    warmup = _recipe.warmup_steps(settings.recipe, epochs * steps) if bayesian else 0
    kl_weight = options[0].temperature * bnn.kl_weight(networks * n_ref)
    position = torch.arange(steps * settings.batch_size)
    history, snapshot, step = [], [p.detach().clone() for p in model.parameters()], 0
    for epoch in range(1, epochs + 1):
        keys = torch.rand(networks, n_ref).masked_fill(~mask, 2.0)
        order = keys.argsort(dim=1).gather(1, position[None, :] % counts[:, None])
        for batch in order.split(settings.batch_size, dim=1):
            xb = x_fit.gather(1, batch[..., None].expand(-1, -1, x_fit.shape[2]))
            yb = y_fit.gather(1, batch)
            mean, log_var = model(xb)
            nll = 0.5 * (log_var + (yb - mean).square() * torch.exp(-log_var))
            data = (nll.mean(1) * data_weight).mean()
            if bayesian:
                loss = bnn.elbo_loss(data, bnn.kl_divergence(model), kl_weight * bnn.linear_kl_warmup(step, warmup))
            else:
                loss = data
            optimizer.zero_grad(set_to_none=True)
            (loss * networks).backward()
            optimizer.step()
            step += 1
        if bayesian and settings.recipe.empirical_bayes:
            bnn.fit_prior_scale_(model)
        if stop is None and epoch % settings.eval_every == 0:
            _, ll = _scores(model, method, x_eval, y_eval, eval_mask, y_mean, y_std, settings.validation_samples)
            history.append(ll)
        elif stop is not None:
            done = torch.tensor([s == epoch for s in stop])
            if done.any():
                with torch.no_grad():
                    for saved, p in zip(snapshot, model.parameters()):
                        saved[done] = p[done]
    if stop is None:
        return torch.stack(history)
    with torch.no_grad():
        for saved, p in zip(snapshot, model.parameters()):
            p.copy_(saved)
    rmse, ll = _scores(model, method, x_eval, y_eval, eval_mask, y_mean, y_std, settings.test_samples)
    fewer = [_scores(model, method, x_eval, y_eval, eval_mask, y_mean, y_std, s)[1] for s in SAMPLE_COUNTS]
    return torch.stack([rmse, ll, *fewer], dim=1)


@torch.no_grad()
def _scores(model: nn.Module, method: str, x: Tensor, y: Tensor, mask: Tensor, y_mean: Tensor, y_std: Tensor,
            samples: int, max_elements: int = EVALUATION_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Return per-network RMSE and mean log-likelihood (original units) of the Monte Carlo mixture.

    The Monte Carlo samples are drawn in passes of at most ``max_elements`` hidden activations.
    """
    model.eval()
    if method in ("torchbayesian", "mc_dropout"):
        net = model.module if isinstance(model, bnn.BayesianModule) else model
        per_pass = max(1, max_elements // (x.shape[0] * x.shape[1] * net.hidden_units))
    if method == "torchbayesian":
        mean, log_var = bnn.predict(model, x, num_samples=samples, chunk_size=min(100, per_pass))
    elif method == "mc_dropout":
        passes = [_dropout_samples(model, x, min(per_pass, samples - start)) for start in range(0, samples, per_pass)]
        mean, log_var = (torch.cat(parts) for parts in zip(*passes))
    else:
        mean, log_var = (t.unsqueeze(0) for t in model(x))
    model.train()
    mean = mean.double() * y_std + y_mean
    log_var = log_var.double() + 2 * y_std.log()
    log_density = -0.5 * (LOG_2PI + log_var + (y - mean).square() * torch.exp(-log_var))
    log_mixture = torch.logsumexp(log_density, dim=0) - math.log(mean.shape[0])
    count = mask.sum(1)
    ll = (log_mixture * mask).sum(1) / count
    rmse = (((mean.mean(0) - y).square() * mask).sum(1) / count).sqrt()
    return rmse, ll


def _dropout_samples(model: nn.Module, x: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """``samples`` MC dropout passes over ``x`` ``[networks, n, features]`` as one batch; ``(mean, log_var)``
    each ``[samples, networks, n]``."""
    n = x.shape[1]
    mean, log_var = model(x.repeat(1, samples, 1))
    return tuple(t.reshape(t.shape[0], samples, n).transpose(0, 1) for t in (mean, log_var))
