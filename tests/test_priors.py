import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchbayesian import bnn


@given(loc=st.floats(-5, 5), scale=st.floats(1e-3, 10), x=st.floats(-10, 10))
@settings(max_examples=30, deadline=None)
def test_gaussian_log_prob_matches_formula(loc: float, scale: float, x: float) -> None:
    prior = bnn.GaussianPrior(loc, scale).double()
    expected = -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
    value = prior.log_prob(torch.tensor(x, dtype=torch.float64))
    assert math.isclose(value.item(), expected, rel_tol=1e-5, abs_tol=1e-5)


def test_prior_parameters_are_buffers_in_the_state_dict() -> None:
    prior = bnn.GaussianPrior(0.5, 2.0)
    assert list(prior.state_dict()) == ["loc", "scale"]
    assert list(prior.parameters()) == []
    assert prior.to(torch.float64).loc.dtype == torch.float64


def test_scalar_prior_is_not_materialised_per_tensor() -> None:
    model = bnn.BayesianModule(torch.nn.Linear(50, 40))
    for _, posterior in model.posteriors():
        assert posterior.prior.loc.numel() == 1 and posterior.prior.scale.numel() == 1


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_rejected(scale: float) -> None:
    with pytest.raises(ValueError, match="GaussianPrior: scale must be"):
        bnn.GaussianPrior(0.0, scale)


def test_bad_types_are_rejected() -> None:
    with pytest.raises(TypeError, match="GaussianPrior: loc must be a float"):
        bnn.GaussianPrior("zero")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point Tensor"):
        bnn.GaussianPrior(torch.tensor(1))
