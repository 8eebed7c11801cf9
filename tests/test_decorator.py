"""Tests for the @bnn.bayesian class decorator."""

import pytest
import torch
from torch import nn

from torchbayesian import bnn


@bnn.bayesian
class Net(nn.Module):
    """A two-layer net."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.fc2(self.norm(torch.tanh(self.fc1(x))))


class Deeper(Net):
    def __init__(self) -> None:
        super().__init__(hidden=5)
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        return self.head(super().forward(x))


def test_instances_are_built_bayesian():
    net = Net(hidden=6)
    assert isinstance(net, nn.Module) and isinstance(net, bnn.BayesianMixin)
    assert [name for name, _ in net.posteriors()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert not bnn.is_bayesian(net.norm)
    assert Net.__name__ == "Net" and Net.__qualname__ == "Net" and Net.__doc__ == "A two-layer net."
    x = torch.randn(5, 3)
    out = net(x)
    assert out.shape == (5, 2)
    assert not torch.equal(out, net(x))
    with bnn.frozen(net):
        assert torch.equal(net(x), net(x))
    assert torch.isfinite(net.log_variational_posterior() - net.log_prior())


def test_frozen_output_matches_the_plain_class_with_the_same_weights():
    net = Net()
    plain = Net.__mro__[1]()
    assert not bnn.is_bayesian(plain)
    means = {name: q.mu.detach() for name, q in net.posteriors()}
    plain.load_state_dict({**net.norm.state_dict(prefix="norm."), **means})
    x = torch.randn(3, 3)
    with bnn.frozen(net):
        assert torch.equal(net(x), plain(x))


def test_subclasses_are_converted_once_after_their_own_init():
    model = Deeper()
    names = [name for name, _ in model.posteriors()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.weight", "head.bias"]
    assert model.fc1.out_features == 5
    assert model(torch.randn(2, 3)).shape == (2, 1)


def test_decorator_arguments():
    @bnn.bayesian(posterior=bnn.ScaleMixturePosterior, prior={"fc.bias": bnn.LaplacePrior()}, exclude="skip*", pi=0.2)
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.skip = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) + self.skip(x)

    model = Model()
    posteriors = dict(model.posteriors())
    assert list(posteriors) == ["fc.weight", "fc.bias"]
    assert all(isinstance(q, bnn.ScaleMixturePosterior) and q.pi.item() == pytest.approx(0.2) for q in posteriors.values())
    assert isinstance(posteriors["fc.bias"].prior, bnn.LaplacePrior)
    assert type(posteriors["fc.weight"].prior) is bnn.GaussianPrior
    model(torch.randn(1, 2)).sum().backward()
    assert model.kl_divergence().item() > 0


def test_forward_samples_each_weight_once():
    @bnn.bayesian
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2, bias=False)

        def forward(self, x):
            return self.fc(x) - self.fc(x)

    assert torch.equal(Twice()(torch.randn(3, 2)), torch.zeros(3, 2))


def test_user_methods_take_precedence():
    @bnn.bayesian
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def kl_divergence(self, **kwargs):
            return "custom"

    assert Custom().kl_divergence() == "custom"
    assert bnn.is_bayesian(Custom())


def test_rejects_non_module_classes():
    with pytest.raises(TypeError, match="@bayesian decorates nn.Module subclasses"):
        bnn.bayesian(int)
    with pytest.raises(TypeError, match="@bayesian decorates nn.Module subclasses"):
        bnn.bayesian(prior=bnn.GaussianPrior())(object)


def test_a_selection_that_matches_nothing_names_the_decorator():
    @bnn.bayesian(include="missing*")
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"^bnn\.bayesian: include='missing\*' selects no trainable"):
        Small()
