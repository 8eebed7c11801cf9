"""The public API: ``from torchbayesian import bnn``.

`BayesianTrainer`, `load_bayesian`, `save_bayesian` and `transformer_policy` need transformers, and
`bayesian_lora`, `load_bayesian_lora` and `LoraTargets` need peft, and `BayesianLightningModule` needs
lightning; they are imported on first access and left out of ``__all__`` so that ``import *`` needs none of them.
"""

from typing import Any

from torchbayesian._sampling import replay_samples, reuse_samples
from torchbayesian.calibration import (
    CalibrationTest,
    ReliabilityCurve,
    brier_score,
    calibration_test,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    reliability_diagram,
)
from torchbayesian.checkpoints import IncompatibleKeys, load_deterministic_state_dict, to_deterministic
from torchbayesian.debug import detect_anomalies
from torchbayesian.decorator import bayesian
from torchbayesian.distributed import seed_per_rank
from torchbayesian.dropout import MCDropout, enable_mc_dropout, is_dropout
from torchbayesian.empirical_bayes import fit_prior_scale_
from torchbayesian.estimators import (
    FlipoutPosterior,
    LayerOp,
    LocalReparameterizationPosterior,
    register_estimator,
)
from torchbayesian.kl import kl_divergence
from torchbayesian.layers import (
    GRU,
    LSTM,
    BayesianLayer,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
    DeConv1d,
    DeConv2d,
    DeConv3d,
    Embedding,
    Linear,
    ModuleList,
    Sequential,
)
from torchbayesian.losses import (
    ELBOLoss,
    GaussianNLLLoss,
    cyclical_kl_annealing,
    elbo_loss,
    kl_weight,
    linear_kl_warmup,
    minibatch_kl_weight,
)
from torchbayesian.mixin import BayesianMixin
from torchbayesian.module import BayesianModule, frozen
from torchbayesian.moped import to_bayesian
from torchbayesian.ood import aupr, auroc, fpr_at_tpr
from torchbayesian.posteriors import GaussianPosterior, ScaleMixturePosterior, VariationalPosterior
from torchbayesian.predict import predict
from torchbayesian.priors import DistributionPrior, GaussianPrior, LaplacePrior, Prior, ScaleMixturePrior
from torchbayesian.registration import is_bayesian, posteriors, register_posterior, remove_posterior
from torchbayesian.temperature import fit_temperature
from torchbayesian.uncertainty import (
    AleatoricUncertainty,
    Entropy,
    EpistemicUncertainty,
    GaussianUncertainty,
    VariationRatio,
    aleatoric_uncertainty,
    entropy,
    epistemic_uncertainty,
    gaussian_uncertainty,
    variation_ratio,
)

__all__ = [
    "GRU",
    "LSTM",
    "AleatoricUncertainty",
    "BayesianLayer",
    "BayesianMixin",
    "BayesianModule",
    "CalibrationTest",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "DeConv1d",
    "DeConv2d",
    "DeConv3d",
    "DistributionPrior",
    "ELBOLoss",
    "Embedding",
    "Entropy",
    "EpistemicUncertainty",
    "FlipoutPosterior",
    "GaussianNLLLoss",
    "GaussianPosterior",
    "GaussianPrior",
    "GaussianUncertainty",
    "IncompatibleKeys",
    "LaplacePrior",
    "LayerOp",
    "Linear",
    "LocalReparameterizationPosterior",
    "MCDropout",
    "ModuleList",
    "Prior",
    "ReliabilityCurve",
    "ScaleMixturePosterior",
    "ScaleMixturePrior",
    "Sequential",
    "VariationRatio",
    "VariationalPosterior",
    "aleatoric_uncertainty",
    "aupr",
    "auroc",
    "bayesian",
    "brier_score",
    "calibration_test",
    "cyclical_kl_annealing",
    "detect_anomalies",
    "elbo_loss",
    "enable_mc_dropout",
    "entropy",
    "epistemic_uncertainty",
    "expected_calibration_error",
    "fit_prior_scale_",
    "fit_temperature",
    "fpr_at_tpr",
    "frozen",
    "gaussian_uncertainty",
    "is_bayesian",
    "is_dropout",
    "kl_divergence",
    "kl_weight",
    "linear_kl_warmup",
    "load_deterministic_state_dict",
    "minibatch_kl_weight",
    "negative_log_likelihood",
    "posteriors",
    "predict",
    "register_estimator",
    "register_posterior",
    "reliability_curve",
    "reliability_diagram",
    "remove_posterior",
    "replay_samples",
    "reuse_samples",
    "seed_per_rank",
    "to_bayesian",
    "to_deterministic",
    "variation_ratio",
]

_HUGGINGFACE = ("BayesianTrainer", "load_bayesian", "save_bayesian", "transformer_policy")
_PEFT = ("LoraTargets", "bayesian_lora", "load_bayesian_lora")
_LIGHTNING = ("BayesianLightningModule",)


def __getattr__(name: str) -> Any:
    # The transformers, peft and Lightning integrations are imported on first use, so that the core needs none.
    if name in _HUGGINGFACE:
        from torchbayesian.integrations import huggingface

        return getattr(huggingface, name)
    if name in _PEFT:
        from torchbayesian.integrations import lora

        return getattr(lora, name)
    if name in _LIGHTNING:
        from torchbayesian.integrations import lightning

        return getattr(lightning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HUGGINGFACE, *_PEFT, *_LIGHTNING])
