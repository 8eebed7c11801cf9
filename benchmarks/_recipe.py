"""torchbayesian's regression recipe as the UCI benchmark applies it to a stacked model."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from torchbayesian import bnn

_EXPERIMENT = json.loads(os.environ.get("TB_RECIPE", "{}"))


def candidates() -> list[Any]:
    from benchmarks._stacked import Candidate

    grid = _EXPERIMENT.get("grid", [{}])
    return [Candidate(json.dumps(g), heteroscedastic=g.get("hetero", True), options=g) for g in grid]


def warmup_steps(total_steps: int) -> int:
    return int(_EXPERIMENT.get("warmup", 0.0) * total_steps)


def make_bayesian(net: nn.Module, options: list[Any]) -> nn.Module:
    def prior(name: str, param: torch.Tensor) -> bnn.GaussianPrior:
        scales = []
        for o in options:
            kind = o.options.get("prior", _EXPERIMENT.get("prior", 1.0))
            scale = float(kind)
            if o.options.get("fan_in", _EXPERIMENT.get("fan_in", False)):
                scale = scale / net.fan_in(name) ** 0.5
            scales.append(scale)
        return bnn.GaussianPrior(0.0, torch.tensor(scales).reshape(-1, 1, 1))

    return bnn.BayesianModule(net, prior=prior, exclude=["log_noise"], sigma_init=_EXPERIMENT.get("sigma", 1e-3))
