"""PyTorch Lightning: a `LightningModule` that trains a Bayesian classifier on the ELBO and evaluates it by Monte Carlo.

Importing this module imports ``lightning``; ``from torchbayesian import bnn`` does not, and loads
`BayesianLightningModule` on first use. Install it with ``pip install torchbayesian[lightning]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchbayesian._validation import non_negative_finite, non_negative_int, positive_int
from torchbayesian.calibration import expected_calibration_error, negative_log_likelihood
from torchbayesian.distributed import seed_per_rank
from torchbayesian.kl import kl_divergence
from torchbayesian.losses import linear_kl_warmup
from torchbayesian.predict import predict
from torchbayesian.uncertainty import entropy

__all__ = ["BayesianLightningModule"]

_SEED_RANGE = 2**63 - 1
_LR_SCHEDULES = ("constant", "cosine")


class BayesianLightningModule(L.LightningModule):
    """Train a Bayesian classifier with Lightning on the ELBO; validate and test it by Monte Carlo.

    **Training.** Each step minimises ``criterion(model(x), y) + T * w * KL / N``, with ``N`` the
    size of the whole training set, ``T`` the KL temperature (``kl_temperature``, 1 for the ELBO)
    and ``w`` the KL warm-up factor (`linear_kl_warmup` over ``kl_warmup_steps`` optimizer steps,
    then 1). ``N`` is ``train_size`` if given, otherwise the length of the training dataloader's
    dataset, which is the whole set also under DDP (Lightning's ``DistributedSampler`` only splits
    the indices). It logs ``train/nll`` (the data term), ``train/kl`` (the summed KL divergence),
    ``train/elbo`` (the per-example ELBO, $-(\\mathrm{nll} + \\mathrm{KL}/N)$), ``train/kl_weight``
    ($T w/N$) and ``train/loss``. ``lr_schedule="cosine"`` anneals the learning rate to zero over
    the run, per optimizer step. The classification recipe of the guide "Getting good
    uncertainty" is ``kl_temperature=0.1, lr_schedule="cosine"``.

    **Distributed.** Under Lightning's DDP strategy every rank computes the same KL and DDP averages
    the gradients, so the KL is counted once and the gradient equals the single-process gradient on
    the combined batch. With ``per_rank_noise=True`` each rank reseeds torch with ``seed + rank``
    at the start of training (`seed_per_rank`, with the seed of ``lightning.seed_everything``), so
    the ranks draw different weights and the averaged gradient is a Monte Carlo estimate over
    ``world_size`` samples.

    **Evaluation.** ``validation_step`` and ``test_step`` predict with ``num_samples`` weight draws
    (`predict`, vectorised) and log, at the end of the epoch and over all ranks,
    ``{stage}/accuracy``, ``{stage}/nll`` and ``{stage}/ece`` of the Monte Carlo predictive (mean of
    the softmax probabilities). When a **second** dataloader is given (``val_dataloaders=[val,
    ood]`` or a list from the datamodule), its inputs are out-of-distribution (OOD) and
    ``{stage}/ood_auroc`` is the area under the ROC curve separating them from the first loader's
    inputs by ``uncertainty`` (the predictive entropy by default). Batches are ``(inputs,
    targets)`` pairs; an OOD batch may also be the inputs alone.

    Subclass it to change the forward (`forward`), the data term (`data_loss`) or the optimizer
    (``configure_optimizers``, Adam by default). A model trained with MC dropout works too
    (`enable_mc_dropout` on it): its KL is zero.

    Args:
        model (nn.Module): The Bayesian model (a `BayesianModule`, drop-in layers, or any module with
            posteriors); it returns logits.
        train_size (int | None): Number of training examples ``N``; ``None`` reads it from the
            training dataloader.
        criterion (nn.Module | None): Data loss averaged over the batch; ``None`` is cross-entropy.
        num_samples (int): Weight draws for validation and test predictions.
        kl_warmup_steps (int): Optimizer steps over which the KL weight rises linearly from 0 to 1.
        kl_temperature (float): Factor ``T`` of the KL weight, a finite number >= 0; below 1 a
            tempered ("cold") posterior, and 0 drops the KL term (an ablation).
        lr (float): Learning rate of the default Adam optimizer.
        lr_schedule (str): ``"constant"``, or ``"cosine"`` to anneal the learning rate from ``lr`` to
            0 over the trainer's optimizer steps.
        uncertainty (Callable): OOD score from the draws, called as ``uncertainty(logits,
            from_logits=True)`` on logits of shape ``[S, batch, C]``; e.g. `entropy` or
            `epistemic_uncertainty`.
        num_bins (int): Bins of the expected calibration error.
        per_rank_noise (bool): Reseed each DDP rank with ``seed + rank`` when training starts.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``train_size``, ``num_samples``, ``kl_warmup_steps``, ``kl_temperature`` or
            ``lr_schedule`` is invalid; when fitting, if ``lr_schedule="cosine"`` and the Trainer
            sets neither ``max_epochs`` nor ``max_steps``.

    Example:
        ```python
        import lightning as L
        model = bnn.BayesianModule(net)
        module = bnn.BayesianLightningModule(model, num_samples=16, kl_warmup_steps=100)
        trainer = L.Trainer(max_epochs=10)
        trainer.fit(module, train_loader, val_dataloaders=[val_loader, ood_loader])
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        train_size: int | None = None,
        criterion: nn.Module | None = None,
        num_samples: int = 16,
        kl_warmup_steps: int = 0,
        kl_temperature: float = 1.0,
        lr: float = 1e-3,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        uncertainty: Callable[..., Tensor] = entropy,
        num_bins: int = 15,
        per_rank_noise: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"BayesianLightningModule: model must be an nn.Module, got {type(model).__name__}.")
        if train_size is not None:
            positive_int("BayesianLightningModule", "train_size", train_size)
        positive_int("BayesianLightningModule", "num_samples", num_samples)
        non_negative_int("BayesianLightningModule", "kl_warmup_steps", kl_warmup_steps)
        non_negative_finite("BayesianLightningModule", "kl_temperature", kl_temperature)
        if lr_schedule not in _LR_SCHEDULES:
            raise ValueError(
                f"BayesianLightningModule: lr_schedule must be one of {', '.join(map(repr, _LR_SCHEDULES))}, "
                f"got {lr_schedule!r}."
            )
        self.model = model
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        self.train_size = train_size
        self.num_samples = num_samples
        self.kl_warmup_steps = kl_warmup_steps
        self.kl_temperature = float(kl_temperature)
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.uncertainty = uncertainty
        self.num_bins = num_bins
        self.per_rank_noise = per_rank_noise
        self.save_hyperparameters(ignore=["model", "criterion", "uncertainty"])
        self._evaluation: dict[int, list[tuple[Tensor, ...]]] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model."""
        return self.model(*args, **kwargs)

    def data_loss(self, outputs: Any, targets: Any) -> Tensor:
        """Return the data term of the loss, ``criterion(outputs, targets)``, averaged over the batch."""
        return self.criterion(outputs, targets)

    def dataset_size(self) -> int:
        """Return ``N``, the number of training examples that divides the KL divergence.

        Raises:
            ValueError: If ``train_size`` was not given and the training dataloader has no sized dataset.
        """
        if self.train_size is not None:
            return self.train_size
        loader = self.trainer.train_dataloader if self._trainer is not None else None
        dataset = getattr(loader, "dataset", None) if isinstance(loader, DataLoader) else None
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                "BayesianLightningModule: cannot read the training-set size N from the training dataloader "
                f"(got {type(loader).__name__} over {type(dataset).__name__}); pass train_size=N, the number "
                "of training examples over all processes."
            ) from None

    def kl_weight(self) -> float:
        """Return the current weight of the KL divergence: temperature x warm-up factor / ``N``."""
        return self.kl_temperature * linear_kl_warmup(self.global_step, self.kl_warmup_steps) / self.dataset_size()

    def elbo_loss(self, data_loss: Tensor) -> Tensor:
        """Return ``data_loss + kl_weight() * KL`` and log the NLL, KL, ELBO, KL weight and loss.

        Call it from your own ``training_step`` to keep the logging and the KL scaling.
        """
        kl = kl_divergence(self.model)
        weight = self.kl_weight()
        loss = data_loss + weight * kl
        # The progress bar shows the data term and the KL apart, beside the loss they make.
        shown = {"train/nll": data_loss.detach(), "train/kl": kl.detach(), "train/loss": loss.detach()}
        logged = {"train/elbo": -(data_loss.detach() + kl.detach() / self.dataset_size()), "train/kl_weight": weight}
        self.log_dict(shown, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict(logged, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Return the negative ELBO of one ``(inputs, targets)`` batch."""
        inputs, targets = batch
        return self.elbo_loss(self.data_loss(self(inputs), targets))

    def on_train_start(self) -> None:
        """Reseed each rank with ``seed + rank`` under DDP when ``per_rank_noise`` is set."""
        if self.per_rank_noise and self.trainer.world_size > 1:
            seed_per_rank(torch.initial_seed() % (_SEED_RANGE - self.trainer.world_size))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Predict one batch with ``num_samples`` draws and keep what the epoch-end metrics need."""
        self._collect(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Predict one batch with ``num_samples`` draws and keep what the epoch-end metrics need."""
        self._collect(batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        """Forget the predictions of the previous validation epoch."""
        self._evaluation = {}

    def on_test_epoch_start(self) -> None:
        """Forget the predictions of the previous test epoch."""
        self._evaluation = {}

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics over all examples (call ``super()`` when overriding)."""
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        """Log the test metrics over all examples (call ``super()`` when overriding)."""
        self._log_evaluation("test")

    def configure_optimizers(self) -> Any:
        """Return Adam over all parameters with learning rate ``lr``, and the cosine schedule if asked for."""
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.lr_schedule == "constant":
            return optimizer
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError(
                "BayesianLightningModule: lr_schedule='cosine' anneals over the run, which has no end; "
                "give the Trainer max_epochs or max_steps."
            )
        annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": annealing, "interval": "step"}}

    def _collect(self, batch: Any, dataloader_idx: int) -> None:
        parts = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        inputs, targets = parts[0], parts[1] if len(parts) > 1 else None
        if dataloader_idx == 0 and targets is None:
            raise ValueError(
                "BayesianLightningModule: the first validation/test dataloader must yield (inputs, targets) "
                f"batches, got {type(batch).__name__} of {len(parts)} element(s); only the second (OOD) "
                "dataloader may yield inputs alone."
            )
        logits = predict(self.model, inputs, num_samples=self.num_samples)
        probs = logits.softmax(-1).mean(0)
        score = self.uncertainty(logits, from_logits=True)
        record = (probs, targets, score) if dataloader_idx == 0 else (score,)
        self._evaluation.setdefault(dataloader_idx, []).append(record)

    def _log_evaluation(self, stage: str) -> None:
        if 0 not in self._evaluation:
            return
        probs, targets, scores = (self._gather([record[i] for record in self._evaluation[0]]) for i in range(3))
        metrics = {
            f"{stage}/accuracy": (probs.argmax(-1) == targets).float().mean(),
            f"{stage}/nll": negative_log_likelihood(probs.clamp_min(torch.finfo(probs.dtype).tiny), targets),
            f"{stage}/ece": expected_calibration_error(probs, targets, num_bins=self.num_bins),
        }
        if 1 in self._evaluation:
            ood_scores = self._gather([record[0] for record in self._evaluation[1]])
            metrics[f"{stage}/ood_auroc"] = _auroc(scores, ood_scores)
        self._evaluation = {}
        self.log_dict(metrics, prog_bar=True, add_dataloader_idx=False, sync_dist=True)

    def _gather(self, parts: list[Tensor]) -> Tensor:
        local = torch.cat(parts)
        if self.trainer.world_size == 1:
            return local
        gathered = self.all_gather(local)  # [world_size, *local.shape]: the sampler gives equal shards
        return gathered.reshape(-1, *local.shape[1:])


def _auroc(negatives: Tensor, positives: Tensor) -> Tensor:
    """Return P(score of a positive > score of a negative) + P(tie) / 2 (Mann-Whitney), exact with ties."""
    scores = torch.cat([negatives, positives]).double()
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct value: ranks of tied scores share the mean of their positions.
    upper = counts.cumsum(0).double()
    ranks = (upper - (counts.double() - 1) / 2)[inverse]
    positive_ranks = ranks[len(negatives):].sum()
    n_pos, n_neg = len(positives), len(negatives)
    return ((positive_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()
