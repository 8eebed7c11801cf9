import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchbayesian import bnn

SETTINGS = settings(max_examples=20, deadline=None)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_weight_mean_and_sum():
    assert bnn.kl_weight(1000) == 1e-3
    assert bnn.kl_weight(1000, batch_size=50, reduction="sum") == 0.05
    with pytest.raises(ValueError, match="reduction='sum' needs batch_size"):
        bnn.kl_weight(1000, reduction="sum")
    with pytest.raises(ValueError, match="dataset_size must be a positive integer, got 0"):
        bnn.kl_weight(0)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        bnn.kl_weight(10, reduction="none")


def test_mean_and_sum_scaling_give_the_same_gradients_up_to_batch_size():
    torch.manual_seed(0)
    model = bnn.BayesianModule(nn.Linear(3, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    grads = []
    for reduction, scale in (("mean", 8.0), ("sum", 1.0)):
        model.zero_grad()
        with bnn.frozen(model):
            logits = model(x)
        weight = bnn.kl_weight(100, batch_size=8, reduction=reduction)
        loss = bnn.ELBOLoss(nn.CrossEntropyLoss(reduction=reduction), kl_weight=weight)(logits, y, kl=model)
        (scale * loss).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for mean_grad, sum_grad in zip(*grads):
        torch.testing.assert_close(mean_grad, sum_grad)


def test_full_batch_elbo_equals_the_per_example_objective_divided_by_n():
    """With the whole data set as one batch, ELBOLoss * N is the textbook negative ELBO."""
    torch.manual_seed(1)
    n = 20
    model = bnn.BayesianModule(nn.Linear(3, 2))
    x, y = torch.randn(n, 3), torch.randint(0, 2, (n,))
    with bnn.frozen(model):
        logits = model(x)
    loss = bnn.ELBOLoss(nn.CrossEntropyLoss(), kl_weight=bnn.kl_weight(n))(logits, y, kl=model)
    textbook = F.cross_entropy(logits, y, reduction="sum") + bnn.kl_divergence(model)
    torch.testing.assert_close(loss * n, textbook)


@SETTINGS
@given(num_batches=st.integers(1, 1100))
def test_minibatch_weights_sum_to_one_and_halve(num_batches):
    weights = [bnn.minibatch_kl_weight(i, num_batches) for i in range(1, num_batches + 1)]
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-12)
    if num_batches <= 60:
        exact = [2.0 ** (num_batches - i) / (2.0**num_batches - 1) for i in range(1, num_batches + 1)]
        assert weights == pytest.approx(exact, rel=1e-12)
    assert all(later == pytest.approx(earlier / 2) for earlier, later in itertools.pairwise(weights[:51]))


def test_minibatch_weight_rejects_bad_indices():
    with pytest.raises(ValueError, match="batch_index is 1-based and at most num_batches=3, got 4"):
        bnn.minibatch_kl_weight(4, 3)
    with pytest.raises(ValueError, match="batch_index must be a positive integer, got 0"):
        bnn.minibatch_kl_weight(0, 3)


def test_annealing_schedules():
    assert [bnn.linear_kl_warmup(s, 10, start=0.5) for s in (0, 5, 10, 11)] == [0.5, 0.75, 1.0, 1.0]
    assert bnn.linear_kl_warmup(3, 0) == 1.0
    assert [bnn.cyclical_kl_annealing(s, 10, ramp_fraction=0.2) for s in (0, 1, 2, 9, 10, 11)] == [
        0.0, 0.5, 1.0, 1.0, 0.0, 0.5
    ]
    with pytest.raises(ValueError, match="ramp_fraction must be in"):
        bnn.cyclical_kl_annealing(0, 10, ramp_fraction=0.0)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        bnn.linear_kl_warmup(-1, 10)


def test_elbo_loss_adds_weighted_kl_and_logs_terms():
    torch.manual_seed(2)
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    elbo = bnn.ELBOLoss(nn.CrossEntropyLoss(), kl_weight=0.01)
    logits = model(x)
    loss = elbo(logits, y, kl=model)
    expected = F.cross_entropy(logits, y) + 0.01 * bnn.kl_divergence(model)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(elbo.last_data_loss, F.cross_entropy(logits, y).detach())
    torch.testing.assert_close(elbo.last_kl, bnn.kl_divergence(model).detach())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    elbo.kl_weight = 0.0
    torch.testing.assert_close(elbo(logits, y, kl=torch.tensor(5.0)), F.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="kl_weight must be a finite non-negative number"):
        elbo.kl_weight = -1.0
    with pytest.raises(TypeError, match="kl must be a model or a Tensor"):
        elbo(logits, y, kl=3.0)
    with pytest.raises(TypeError, match="criterion must be a callable loss"):
        bnn.ELBOLoss("cross_entropy", kl_weight=1.0)


def test_gaussian_nll_accepts_log_variance():
    generator = torch.Generator().manual_seed(3)
    mean, target, log_var = torch.randn(3, 50, generator=generator, dtype=torch.float64)
    loss = bnn.GaussianNLLLoss(log_variance=True, full=True)(mean, target, log_var)
    reference = -torch.distributions.Normal(mean, (0.5 * log_var).exp()).log_prob(target).mean()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(bnn.GaussianNLLLoss()(mean, target, log_var.exp()),
                               nn.GaussianNLLLoss()(mean, target, log_var.exp()))
    assert isinstance(bnn.GaussianNLLLoss(), nn.GaussianNLLLoss)


def test_regression_elbo_trains_a_heteroscedastic_model():
    torch.manual_seed(4)
    x = torch.linspace(-2, 2, 128).unsqueeze(-1)
    y = torch.sin(2 * x) + 0.3 * torch.randn_like(x)
    model = bnn.BayesianModule(nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 2)), sigma_init=1e-3)
    elbo = bnn.ELBOLoss(bnn.GaussianNLLLoss(log_variance=True), kl_weight=bnn.kl_weight(len(x)))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    first = None
    for _ in range(300):
        optimizer.zero_grad()
        mean, log_var = model(x).unbind(-1)
        loss = elbo(mean, y.squeeze(-1), log_var, kl=model)
        loss.backward()
        optimizer.step()
        first = elbo.last_data_loss if first is None else first
    assert elbo.last_data_loss < first - 0.5
    with torch.no_grad():
        mean, log_var = bnn.predict(model, x, num_samples=16).unbind(-1)
    u = bnn.gaussian_uncertainty(mean, log_var, log_variance=True)
    assert 0.03 < u.aleatoric.mean().item() < 0.3  # the noise variance is 0.09
    assert (mean.mean(dim=0) - torch.sin(2 * x.squeeze(-1))).square().mean() < 0.05
