"""Invalid constructor arguments raise a clear TypeError or ValueError, never a silent NaN."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn
from torchbayesian.kl import posterior_kl

SETTINGS = settings(max_examples=20, deadline=None)
FLOAT_DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])
INT_DTYPES = st.sampled_from([torch.int8, torch.int32, torch.int64, torch.bool])
NOT_POSITIVE = st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.just(-math.inf))
NON_NUMBERS = st.one_of(st.booleans(), st.text(max_size=3), st.none(), st.lists(st.floats(), max_size=2))
NON_MODULES = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.builds(torch.zeros, st.just(2)))
SHAPES = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


@SETTINGS
@given(sigma=NOT_POSITIVE)
def test_posterior_rejects_non_positive_or_non_finite_sigma(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma_init must be a finite positive number"):
        bnn.GaussianPosterior((2, 3), sigma_init=sigma)


@SETTINGS
@given(sigma=NON_NUMBERS)
def test_posterior_rejects_non_number_sigma(sigma: object) -> None:
    with pytest.raises(TypeError, match="sigma_init must be a float"):
        bnn.GaussianPosterior((2,), sigma_init=sigma)  # type: ignore[arg-type]


@SETTINGS
@given(sigma=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False), dtype=FLOAT_DTYPES,
       shape=SHAPES, mu=st.floats(-100, 100))
@example(sigma=34.0, dtype=torch.float16, shape=(64, 64), mu=99.0)  # a float16 KL sum beyond 65504
@example(sigma=250.0, dtype=torch.float16, shape=(64, 64), mu=-100.0)
def test_any_accepted_sigma_gives_finite_samples_and_kl(sigma: float, dtype: torch.dtype, shape: tuple[int, ...],
                                                        mu: float) -> None:
    try:
        layer = nn.Linear(shape[-1], 2).to(dtype)
        posterior = bnn.register_posterior(layer, "weight", sigma_init=sigma, mu_init=mu)
    except ValueError as error:
        assert "sigma" in str(error)
        return
    assert torch.isfinite(posterior.sample_parameters()).all()
    assert torch.isfinite(bnn.kl_divergence(layer))
    assert torch.isfinite(layer.weight).all()


@pytest.mark.parametrize(("sigma", "dtype", "message"), [
    (1e-50, torch.float32, "sigma\\*\\*2 = 0 in torch.float32"),
    (1e-30, torch.float32, "sigma\\*\\*2 = 0 in torch.float32"),
    (1e-200, torch.float64, "sigma\\*\\*2 = 0 in torch.float64"),
    (1e-5, torch.float16, "sigma\\*\\*2 = 0 in torch.float16"),
    (1e39, torch.float32, "infinite rho or sigma\\*\\*2 in torch.float32"),
    (1e3, torch.float16, "infinite rho or sigma\\*\\*2 in torch.float16"),
])
def test_posterior_rejects_sigma_not_representable_in_dtype(sigma: float, dtype: torch.dtype, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bnn.GaussianPosterior((2,), sigma_init=sigma, dtype=dtype)


@SETTINGS
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), init=st.sampled_from(["mu_init", "rho_init"]),
       as_tensor=st.booleans())
def test_posterior_rejects_non_finite_inits(bad: float, init: str, as_tensor: bool) -> None:
    value = torch.tensor([0.5, bad]) if as_tensor else bad
    with pytest.raises(ValueError, match="NaN or Inf|NaN or infinite"):
        bnn.GaussianPosterior((2,), **{init: value})


@SETTINGS
@given(shape=SHAPES, extra=st.integers(1, 3))
def test_posterior_rejects_init_of_wrong_shape(shape: tuple[int, ...], extra: int) -> None:
    wrong = torch.zeros(*shape[:-1], shape[-1] + extra)
    with pytest.raises(ValueError, match=r"mu_init has shape .* expected"):
        bnn.GaussianPosterior(shape, mu_init=wrong)


@SETTINGS
@given(shape=st.lists(st.integers(-3, 3), min_size=1, max_size=3).filter(lambda s: min(s) < 0))
def test_posterior_rejects_negative_shapes(shape: list[int]) -> None:
    with pytest.raises(ValueError, match="shape must not have negative sizes"):
        bnn.GaussianPosterior(tuple(shape))


@pytest.mark.parametrize("shape", [(2.0, 3), ("a",), 3, torch.zeros(2), (True,)])
def test_posterior_rejects_shapes_that_are_not_int_tuples(shape: object) -> None:
    with pytest.raises(TypeError, match="shape must be a tuple of ints"):
        bnn.GaussianPosterior(shape)  # type: ignore[arg-type]


@SETTINGS
@given(dtype=INT_DTYPES)
def test_posterior_rejects_integer_dtypes(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        bnn.GaussianPosterior((2,), dtype=dtype)


@SETTINGS
@given(scale=NOT_POSITIVE, as_tensor=st.booleans())
def test_prior_rejects_non_positive_or_non_finite_scale(scale: float, as_tensor: bool) -> None:
    value = torch.tensor([1.0, scale]) if as_tensor else scale
    with pytest.raises(ValueError, match="GaussianPrior: scale must be (finite|positive)"):
        bnn.GaussianPrior(0.0, value)


@SETTINGS
@given(loc=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_prior_rejects_non_finite_loc(loc: float) -> None:
    with pytest.raises(ValueError, match="GaussianPrior: loc must be finite"):
        bnn.GaussianPrior(loc, 1.0)


@SETTINGS
@given(dtype=INT_DTYPES, argument=st.sampled_from(["loc", "scale"]))
def test_prior_rejects_integer_tensors(dtype: torch.dtype, argument: str) -> None:
    with pytest.raises(TypeError, match=f"GaussianPrior: {argument} must be a floating-point Tensor"):
        bnn.GaussianPrior(**{argument: torch.ones(2, dtype=dtype)})


@SETTINGS
@given(value=NON_NUMBERS)
def test_prior_rejects_non_numbers(value: object) -> None:
    with pytest.raises(TypeError, match="GaussianPrior: scale must be a float"):
        bnn.GaussianPrior(0.0, value)  # type: ignore[arg-type]


@SETTINGS
@given(
    prior_class=st.sampled_from([bnn.GaussianPrior, bnn.LaplacePrior]),
    loc_size=st.integers(2, 4),
    scale_size=st.integers(2, 4),
)
def test_prior_rejects_shapes_that_do_not_broadcast(
    prior_class: type[bnn.GaussianPrior | bnn.LaplacePrior], loc_size: int, scale_size: int
) -> None:
    if loc_size == scale_size:
        prior_class(torch.zeros(loc_size), torch.ones(scale_size))
        return
    with pytest.raises(ValueError, match=f"{prior_class.__name__}: loc and scale must broadcast together"):
        prior_class(torch.zeros(loc_size), torch.ones(scale_size))


@pytest.mark.parametrize("prior_class", [bnn.GaussianPrior, bnn.LaplacePrior])
def test_prior_repr_shows_shapes_when_either_argument_is_a_tensor(prior_class: type) -> None:
    assert repr(prior_class(0.0, 0.5)) == f"{prior_class.__name__}(loc=0, scale=0.5)"
    assert "scale=<tensor (3,)>" in repr(prior_class(0.0, torch.ones(3)))
    assert "loc=<tensor (2, 1)>" in repr(prior_class(torch.zeros(2, 1), 1.0))


@SETTINGS
@given(size=st.integers(2, 5).filter(lambda n: n != 3))
def test_prior_must_broadcast_to_the_tensor(size: int) -> None:
    layer = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"weight: the prior GaussianPrior does not broadcast"):
        bnn.register_posterior(layer, "weight", prior=bnn.GaussianPrior(torch.zeros(size), 1.0))
    assert not bnn.is_bayesian(layer)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    prior = bnn.GaussianPrior(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match=r"0.bias: the prior GaussianPrior does not broadcast"):
        bnn.BayesianModule(model, prior=prior)
    assert not bnn.is_bayesian(model)


@SETTINGS
@given(obj=NON_MODULES)
def test_functions_reject_non_modules(obj: object) -> None:
    with pytest.raises(TypeError, match="BayesianModule expects an nn.Module"):
        bnn.BayesianModule(obj)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="register_posterior expects an nn.Module"):
        bnn.register_posterior(obj, "weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kl_divergence expects an nn.Module"):
        bnn.kl_divergence(obj)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an nn.Module"):
        bnn.remove_posterior(obj, "weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected an nn.Module"):
        list(bnn.posteriors(obj))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="to_deterministic expects an nn.Module"):
        bnn.to_deterministic(obj)  # type: ignore[arg-type]


@SETTINGS
@given(prior=st.one_of(st.floats(), st.text(max_size=2), st.builds(nn.Linear, st.just(1), st.just(1))))
def test_bayesian_module_rejects_non_priors_and_leaves_model_unchanged(prior: object) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="prior must be a Prior"):
        bnn.BayesianModule(model, prior=prior)  # type: ignore[arg-type]
    assert not bnn.is_bayesian(model)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias"]


@SETTINGS
@given(posterior=st.one_of(st.just(nn.Linear), st.just(bnn.GaussianPrior), st.text(max_size=2), st.integers()))
def test_bayesian_module_rejects_non_posteriors(posterior: object) -> None:
    with pytest.raises(TypeError, match="posterior must be a VariationalPosterior subclass or instance"):
        bnn.BayesianModule(nn.Linear(2, 2), posterior)  # type: ignore[arg-type]


@SETTINGS
@given(sigma=NOT_POSITIVE)
def test_bayesian_module_names_the_tensor_and_rolls_back(sigma: float) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"^0.weight: GaussianPosterior: sigma_init must be a finite positive number"):
        bnn.BayesianModule(model, sigma_init=sigma)
    assert not bnn.is_bayesian(model)


def test_nan_pretrained_weight_is_rejected_with_its_name() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        model[1].weight[0, 1] = math.nan
    with pytest.raises(ValueError, match=r"^1.weight: GaussianPosterior: the initial mean .* contains NaN or Inf"):
        bnn.BayesianModule(model)
    assert not bnn.is_bayesian(model)


@SETTINGS
@given(dtype=INT_DTYPES)
def test_integer_parameters_cannot_be_made_bayesian(dtype: torch.dtype) -> None:
    module = nn.Module()
    module.counts = nn.Parameter(torch.zeros(3, dtype=dtype), requires_grad=False)
    with pytest.raises((TypeError, ValueError), match="Module.counts"):
        bnn.register_posterior(module, "counts")
    with pytest.warns(UserWarning, match="no trainable floating-point parameter"):
        model = bnn.BayesianModule(module)
    assert not bnn.is_bayesian(model)  # kept deterministic: integer tensors are not eligible


@SETTINGS
@given(num_samples=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=2)))
def test_kl_rejects_bad_num_samples(num_samples: object) -> None:
    model = bnn.BayesianModule(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        posterior_kl(next(model.posteriors())[1], num_samples=num_samples)  # type: ignore[arg-type]
