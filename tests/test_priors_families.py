"""Tests for ScaleMixturePrior, LaplacePrior, DistributionPrior and the accepted ``prior=`` forms."""

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn
from torchbayesian.registration import resolve_prior


def _normal_log_density(x: float, loc: float, scale: float) -> float:
    return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)


values = st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=6)


@settings(max_examples=20, deadline=None)
@given(values=values, pi=st.floats(0.0, 1.0), sigma1=st.floats(0.05, 3.0), sigma2=st.floats(1e-3, 0.5))
def test_scale_mixture_log_prob_matches_formula(values, pi, sigma1, sigma2):
    prior = bnn.ScaleMixturePrior(*(torch.tensor(v, dtype=torch.float64) for v in (pi, sigma1, sigma2)))
    expected = 0.0
    for x in values:
        terms = [math.log(w) + _normal_log_density(x, 0.0, s) for w, s in ((pi, sigma1), (1 - pi, sigma2)) if w > 0]
        top = max(terms)
        expected += top + math.log(sum(math.exp(t - top) for t in terms))
    actual = prior.log_prob(torch.tensor(values, dtype=torch.float64)).item()
    assert actual == pytest.approx(expected, rel=1e-6, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(values=values, loc=st.floats(-2.0, 2.0), scale=st.floats(0.05, 3.0))
def test_laplace_log_prob_matches_formula(values, loc, scale):
    prior = bnn.LaplacePrior(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    expected = sum(-math.log(2 * scale) - abs(x - loc) / scale for x in values)
    assert prior.log_prob(torch.tensor(values, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(values=values, df=st.floats(0.5, 30.0), loc=st.floats(-1.0, 1.0), scale=st.floats(0.1, 2.0))
def test_student_t_distribution_prior_log_prob_matches_formula(values, df, loc, scale):
    arguments = (torch.tensor(v, dtype=torch.float64) for v in (df, loc, scale))
    prior = bnn.DistributionPrior(torch.distributions.StudentT(*arguments), shape=(len(values),))
    expected = 0.0
    for x in values:
        z = (x - loc) / scale
        expected += (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)
                     - (df + 1) / 2 * math.log1p(z * z / df))
    assert prior.log_prob(torch.tensor(values, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-6)


def test_scale_mixture_prior_is_a_mixture_same_family_and_saved():
    prior = bnn.ScaleMixturePrior(0.25, 1.5, 0.01)
    assert isinstance(prior.distribution, torch.distributions.MixtureSameFamily)
    assert set(prior.state_dict()) == {"pi", "sigma1", "sigma2"}
    assert prior.distribution.variance.item() == pytest.approx(0.25 * 1.5**2 + 0.75 * 0.01**2)
    restored = bnn.ScaleMixturePrior()
    restored.load_state_dict(prior.state_dict())
    assert restored.pi.item() == 0.25 and restored.sigma1.item() == 1.5


def test_scale_mixture_prior_with_pi_one_is_the_first_gaussian():
    x = torch.linspace(-2, 2, 7, dtype=torch.float64)
    prior = bnn.ScaleMixturePrior(1.0, 0.7, 0.01).double()
    expected = torch.distributions.Normal(0.0, 0.7).log_prob(x).sum()
    torch.testing.assert_close(prior.log_prob(x), expected.double())


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: bnn.ScaleMixturePrior(pi=1.5), r"pi must lie in \[0, 1\]"),
    (lambda: bnn.ScaleMixturePrior(sigma1=0.0), "sigma1 must be positive"),
    (lambda: bnn.ScaleMixturePrior(sigma2=math.inf), "sigma2 must be finite"),
    (lambda: bnn.LaplacePrior(scale=-1.0), "scale must be positive"),
    (lambda: bnn.LaplacePrior(loc="0"), "loc must be a float"),
])
def test_invalid_prior_arguments(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


def test_distribution_prior_broadcasts_and_follows_dtype():
    prior = bnn.DistributionPrior(torch.distributions.Laplace(torch.zeros(3), 1.0), shape=(2, 3))
    assert prior.distribution.batch_shape == (2, 3)
    prior = prior.double()
    assert prior.distribution.loc.dtype == torch.float64
    assert set(prior.state_dict()) == {"loc", "scale"}


def test_distribution_prior_errors():
    with pytest.raises(TypeError, match="expects a torch.distributions.Distribution"):
        bnn.DistributionPrior(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not broadcast"):
        bnn.DistributionPrior(torch.distributions.Normal(torch.zeros(4), 1.0), shape=(2, 3))


def test_distribution_prior_survives_state_dict():
    model = bnn.BayesianModule(nn.Linear(3, 2), prior=torch.distributions.StudentT(3.0, 0.0, 0.5))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = bnn.BayesianModule(nn.Linear(3, 2), prior=torch.distributions.StudentT(5.0, 1.0, 2.0))
    other.load_state_dict(torch.load(buffer))
    q = dict(other.posteriors())["weight"]
    assert isinstance(q.prior, bnn.DistributionPrior)
    assert q.prior.df.item() == 3.0 and q.prior.scale.item() == 0.5
    assert q.prior.distribution.batch_shape == (2, 3)


def test_distribution_passed_as_prior_is_wrapped_per_tensor():
    model = bnn.BayesianModule(nn.Linear(3, 2), prior=torch.distributions.StudentT(3.0))
    shapes = {name: q.prior.distribution.batch_shape for name, q in model.posteriors()}
    assert shapes == {"weight": (2, 3), "bias": (2,)}
    model(torch.randn(4, 3))
    assert torch.isfinite(model.kl_divergence())


def test_mapping_prior_by_glob_and_module_type():
    net = nn.Sequential(nn.Linear(2, 3), nn.Conv1d(1, 1, 2), nn.Linear(3, 1))
    shared = bnn.LaplacePrior(0.0, 0.1)
    model = bnn.BayesianModule(net, prior={"2.*": shared, nn.Conv1d: bnn.ScaleMixturePrior(), "0.bias": torch.distributions.Cauchy(0.0, 1.0)})
    priors = {name: q.prior for name, q in model.posteriors()}
    assert type(priors["0.weight"]) is bnn.GaussianPrior and priors["0.weight"].scale.item() == 1.0
    assert isinstance(priors["0.bias"], bnn.DistributionPrior)
    assert isinstance(priors["1.weight"], bnn.ScaleMixturePrior) and isinstance(priors["1.bias"], bnn.ScaleMixturePrior)
    assert priors["2.weight"] is shared and priors["2.bias"] is shared


def test_mapping_first_match_wins():
    first, second = bnn.GaussianPrior(0.0, 0.5), bnn.GaussianPrior(0.0, 2.0)
    model = bnn.BayesianModule(nn.Linear(2, 2), prior={"weight": first, "*": second})
    priors = {name: q.prior for name, q in model.posteriors()}
    assert priors == {"weight": first, "bias": second}


def test_callable_prior_receives_qualified_name_and_param():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    calls = []

    def choose(name, param):
        calls.append((name, tuple(param.shape)))
        return bnn.GaussianPrior(param.detach(), 0.1) if name.endswith("weight") else None

    model = bnn.BayesianModule(net, prior=choose)
    assert calls == [("0.weight", (3, 2)), ("0.bias", (3,)), ("1.weight", (1, 3)), ("1.bias", (1,))]
    priors = {name: q.prior for name, q in model.posteriors()}
    assert priors["0.weight"].loc.shape == (3, 2)
    assert priors["0.bias"].loc.shape == () and priors["0.bias"].scale.item() == 1.0


def test_register_posterior_accepts_every_prior_form():
    layer = nn.Linear(2, 2)
    q = bnn.register_posterior(layer, "weight", prior={"weight": bnn.LaplacePrior()})
    assert isinstance(q.prior, bnn.LaplacePrior)
    q = bnn.register_posterior(layer, "bias", prior=lambda name, param: torch.distributions.Laplace(0.0, 2.0))
    assert isinstance(q.prior, bnn.DistributionPrior) and q.prior.distribution.batch_shape == (2,)


def test_invalid_prior_specs_raise_and_leave_module_unchanged():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="prior must be a Prior, a torch.distributions.Distribution"):
        bnn.register_posterior(layer, "weight", prior=1.0)
    with pytest.raises(TypeError, match="prior mapping keys must be glob strings"):
        bnn.BayesianModule(layer, prior={3: bnn.GaussianPrior()})
    with pytest.raises(TypeError, match="weight: prior must be"):
        resolve_prior(lambda name, param: "gaussian", torch.zeros(2), "weight")
    assert not bnn.is_bayesian(layer)
