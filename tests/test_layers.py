"""Tests for the drop-in Bayesian layers, bnn.Sequential and bnn.ModuleList."""

import copy
import io

import pytest
import torch
from torch import nn

from torchbayesian import bnn

SPECS = [
    (bnn.Linear, nn.Linear, (4, 3), {}, (5, 4)),
    (bnn.Linear, nn.Linear, (4, 3), {"bias": False}, (2, 6, 4)),
    (bnn.Conv1d, nn.Conv1d, (4, 6, 3), {"groups": 2, "dilation": 2, "padding": "same", "padding_mode": "reflect"}, (2, 4, 9)),
    (bnn.Conv1d, nn.Conv1d, (2, 3, 3), {"stride": 2, "padding": 1, "padding_mode": "circular"}, (2, 2, 8)),
    (bnn.Conv2d, nn.Conv2d, (4, 4, 3), {"groups": 4, "padding": "same", "dilation": (1, 2), "padding_mode": "replicate"}, (2, 4, 6, 7)),
    (bnn.Conv2d, nn.Conv2d, (3, 6, (3, 2)), {"stride": (2, 1), "padding": (1, 0), "bias": False}, (1, 3, 7, 5)),
    (bnn.Conv3d, nn.Conv3d, (2, 4, 3), {"padding": "same", "groups": 2, "dilation": 2}, (1, 2, 5, 5, 5)),
    (bnn.ConvTranspose1d, nn.ConvTranspose1d, (4, 2, 3), {"stride": 2, "output_padding": 1, "groups": 2, "dilation": 2}, (2, 4, 6)),
    (bnn.ConvTranspose2d, nn.ConvTranspose2d, (3, 4, 3), {"stride": 2, "padding": 1, "output_padding": 1}, (2, 3, 4, 5)),
    (bnn.ConvTranspose3d, nn.ConvTranspose3d, (2, 2, 2), {"stride": 2, "output_padding": 1, "bias": False}, (1, 2, 3, 3, 3)),
    (bnn.LSTM, nn.LSTM, (3, 4), {"num_layers": 2, "bidirectional": True, "batch_first": True}, (2, 5, 3)),
    (bnn.LSTM, nn.LSTM, (3, 4), {"proj_size": 2, "bias": False}, (5, 2, 3)),
    (bnn.GRU, nn.GRU, (3, 5), {"num_layers": 2, "bidirectional": True, "batch_first": True}, (2, 5, 3)),
    (bnn.Embedding, nn.Embedding, (10, 4), {"padding_idx": 0}, None),
]
IDS = [f"{spec[0].__name__}-{i}" for i, spec in enumerate(SPECS)]


def _input(shape):
    if shape is None:
        return torch.tensor([[0, 3, 9], [1, 1, 2]])
    return torch.randn(shape)


def _torch_layer_with(layer: nn.Module, torch_cls, args, kwargs, read) -> nn.Module:
    """A plain torch layer whose parameters are ``read(posterior)`` for each posterior of ``layer``."""
    reference = torch_cls(*args, **kwargs)
    reference.load_state_dict({name: read(name, q).detach() for name, q in layer.posteriors()})
    return reference


def _flatten(output):
    if isinstance(output, tuple):
        return [t for item in output for t in _flatten(item)]
    return [output]


@pytest.mark.parametrize(("cls", "torch_cls", "args", "kwargs", "shape"), SPECS, ids=IDS)
def test_frozen_output_equals_torch_layer_with_mean_weights(cls, torch_cls, args, kwargs, shape):
    torch.manual_seed(0)
    layer = cls(*args, **kwargs, freeze=True)
    assert isinstance(layer, torch_cls) and isinstance(layer, bnn.BayesianLayer)
    reference = _torch_layer_with(layer, torch_cls, args, kwargs, lambda name, q: q.mu)
    x = _input(shape)
    for got, expected in zip(_flatten(layer(x)), _flatten(reference(x)), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(("cls", "torch_cls", "args", "kwargs", "shape"), SPECS, ids=IDS)
def test_sampled_output_uses_one_sample_per_forward(cls, torch_cls, args, kwargs, shape):
    torch.manual_seed(1)
    layer = cls(*args, **kwargs)
    x = _input(shape)
    with bnn.reuse_samples():
        samples = {name: getattr(layer, name) for name, _ in layer.posteriors()}
        output = layer(x)
    reference = _torch_layer_with(layer, torch_cls, args, kwargs, lambda name, q: samples[name])
    for got, expected in zip(_flatten(output), _flatten(reference(x)), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for name, q in layer.posteriors():
        assert q.last_sample is samples[name]
    assert not torch.equal(_flatten(layer(x))[0], _flatten(layer(x))[0])


def test_parameters_are_the_variational_ones():
    layer = bnn.Linear(3, 2)
    assert [name for name, _ in layer.named_parameters()] == [
        "parametrizations.weight.0.mu", "parametrizations.weight.0.rho",
        "parametrizations.bias.0.mu", "parametrizations.bias.0.rho",
    ]
    lstm = bnn.LSTM(2, 3, num_layers=2)
    assert {name for name, _ in lstm.posteriors()} == {
        f"{kind}_{gate}_l{i}" for kind in ("weight", "bias") for gate in ("ih", "hh") for i in (0, 1)
    }


def test_deconv_aliases():
    assert bnn.DeConv1d is bnn.ConvTranspose1d
    assert bnn.DeConv2d is bnn.ConvTranspose2d
    assert bnn.DeConv3d is bnn.ConvTranspose3d


def test_conv_transpose_output_size_argument():
    torch.manual_seed(0)
    layer = bnn.ConvTranspose2d(2, 2, 3, stride=2, freeze=True)
    reference = _torch_layer_with(layer, nn.ConvTranspose2d, (2, 2, 3), {"stride": 2}, lambda name, q: q.mu)
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(layer(x, output_size=[10, 10]), reference(x, output_size=[10, 10]))


def test_default_prior_is_the_scale_mixture():
    layer = bnn.Conv2d(2, 3, 3)
    for _, q in layer.posteriors():
        assert isinstance(q.prior, bnn.ScaleMixturePrior)
        assert (q.prior.pi.item(), q.prior.sigma1.item(), q.prior.sigma2.item()) == pytest.approx((0.5, 1.0, 0.0025))
        torch.testing.assert_close(q.sigma, torch.full_like(q.sigma, 1e-3))


def test_prior_and_posterior_keyword_arguments():
    layer = bnn.Linear(3, 2, prior_sigma_1=0.3, prior_sigma_2=0.01, prior_pi=0.25, posterior_mu_init=0.0,
                       posterior_rho_init=-4.0)
    for _, q in layer.posteriors():
        assert (q.prior.pi.item(), q.prior.sigma1.item(), q.prior.sigma2.item()) == pytest.approx((0.25, 0.3, 0.01))
        assert (q.mu == 0).all() and (q.rho == -4.0).all()
    layer = bnn.GRU(2, 3, prior_dist=torch.distributions.StudentT(4.0), posterior_mu_init=nn.init.ones_)
    for name, q in layer.posteriors():
        assert isinstance(q.prior, bnn.DistributionPrior)
        assert q.prior.distribution.batch_shape == q.shape
        assert (q.mu == 1).all(), name
    layer = bnn.Embedding(5, 2, prior_dist=bnn.LaplacePrior(0.0, 0.2))
    assert isinstance(dict(layer.posteriors())["weight"].prior, bnn.LaplacePrior)


def test_freeze_and_unfreeze():
    layer = bnn.Linear(3, 2, freeze=True)
    x = torch.randn(4, 3)
    assert torch.equal(layer(x), layer(x))
    assert layer.unfreeze() is layer
    assert not torch.equal(layer(x), layer(x))
    layer.freeze()
    assert torch.equal(layer(x), nn.functional.linear(x, layer.parametrizations.weight[0].mu,
                                                      layer.parametrizations.bias[0].mu))


@pytest.mark.parametrize(("cls", "args"), [(bnn.Linear, (3, 2)), (bnn.LSTM, (2, 3)), (bnn.ConvTranspose1d, (2, 2, 3))])
def test_state_dict_round_trip(cls, args):
    torch.manual_seed(0)
    source = cls(*args, prior_sigma_1=0.3, prior_pi=0.8)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    target = cls(*args)
    target.load_state_dict(torch.load(buffer))
    assert source.state_dict().keys() == target.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    for _, q in target.posteriors():
        assert q.prior.sigma1.item() == pytest.approx(0.3) and q.prior.pi.item() == pytest.approx(0.8)
    x = torch.randn(2, 2, 5) if cls is not bnn.Linear else torch.randn(2, 3)
    if cls is bnn.LSTM:
        x = torch.randn(4, 2, 2)
    source.freeze()
    target.freeze()
    for got, expected in zip(_flatten(target(x)), _flatten(source(x)), strict=True):
        assert torch.equal(got, expected)


def test_training_updates_posteriors_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = bnn.Sequential(bnn.Conv1d(1, 2, 3, padding="same"), nn.Flatten(), bnn.Linear(8, 1))
    loss = model.sample_elbo(torch.randn(6, 1, 4), torch.randn(6, 1), nn.MSELoss(), num_samples=2, kl_weight=1e-3)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_sequential_and_module_list_collect_kl():
    torch.manual_seed(0)
    first, second = bnn.Linear(3, 4), bnn.Linear(4, 2, prior_dist=bnn.GaussianPrior(0.0, 1.0))
    sequential = bnn.Sequential(first, nn.ReLU(), second)
    sequential(torch.randn(5, 3))
    kl_first, kl_second = first.kl_divergence(), second.kl_divergence()
    torch.testing.assert_close(sequential.kl_divergence(), kl_first + kl_second)
    torch.testing.assert_close(bnn.ModuleList([first, second]).kl_divergence(), kl_first + kl_second)
    assert len(list(sequential.posteriors())) == 4
    assert bnn.Sequential(nn.ReLU()).kl_divergence().item() == 0.0


def test_sequential_samples_a_shared_layer_once():
    torch.manual_seed(0)
    shared = bnn.Linear(3, 3)
    model = bnn.Sequential(shared, shared)
    x = torch.randn(2, 3)
    out = model(x)
    weight, bias = shared.parametrizations.weight[0].last_sample, shared.parametrizations.bias[0].last_sample
    expected = nn.functional.linear(nn.functional.linear(x, weight, bias), weight, bias)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(("cls", "args", "shape"), [(bnn.LSTM, (2, 3), (4, 1, 2)), (bnn.GRU, (2, 3), (4, 1, 2)), (bnn.Linear, (2, 3), (4, 2))])
def test_deepcopy_after_forward_is_independent(cls, args, shape):
    layer = cls(*args)
    x = torch.randn(shape)
    layer(x)
    replica = copy.deepcopy(layer)
    with bnn.frozen(layer), bnn.frozen(replica):
        for got, expected in zip(_flatten(replica(x)), _flatten(layer(x)), strict=True):
            assert torch.equal(got, expected)
    first = next(iter(dict(replica.posteriors()).values()))
    with torch.no_grad():
        first.mu.add_(1.0)
    assert not torch.equal(first.mu, next(iter(dict(layer.posteriors()).values())).mu)
    assert _flatten(replica(x))[0].shape == _flatten(layer(x))[0].shape


@pytest.mark.parametrize(("pi", "expected_scale"), [(1.0, 0.3), (0.0, 0.02)])
def test_degenerate_mixture_is_a_gaussian_prior_with_closed_form_kl(pi, expected_scale):
    layer = bnn.Linear(3, 2, prior_pi=pi, prior_sigma_1=0.3, prior_sigma_2=0.02)
    q = dict(layer.posteriors())["weight"]
    assert type(q.prior) is bnn.GaussianPrior and q.prior.scale.item() == pytest.approx(expected_scale)
    mixture = bnn.ScaleMixturePrior(pi, 0.3, 0.02)
    w = torch.randn(2, 3)
    torch.testing.assert_close(q.prior.log_prob(w), mixture.log_prob(w))
    assert torch.equal(layer.kl_divergence(), layer.kl_divergence())
