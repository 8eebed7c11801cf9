"""Fast paths: shared sigma, cached posterior lists, and no full-size copy of the original weights."""

import torch
from torch import nn

from torchbayesian import bnn


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_wrapped_model_holds_only_mu_rho_and_scalar_priors():
    original = _mlp()
    original_numel = sum(p.numel() for p in original.parameters())
    model = bnn.BayesianModule(original)
    posteriors = list(model.posteriors())
    assert len(posteriors) == 6
    assert sum(p.numel() for p in model.parameters()) == 2 * original_numel
    state = model.state_dict()
    assert sum(t.numel() for t in state.values()) == 2 * original_numel + 2 * len(posteriors)
    assert all(key.endswith((".mu", ".rho", ".prior.loc", ".prior.scale")) for key in state)


def test_sigma_is_computed_once_per_block_and_kl_inside_the_block_is_unchanged():
    torch.manual_seed(0)
    model = bnn.BayesianModule(_mlp(), sigma_init=0.2)
    q = next(iter(model.posteriors()))[1]
    assert q.sigma is not q.sigma
    x = torch.randn(4, 6)
    with bnn.reuse_samples():
        tracked = q.sigma
        assert q.sigma is tracked and tracked.requires_grad
        with torch.no_grad():
            assert q.sigma is not tracked and not q.sigma.requires_grad
        model(x)
        inside = model.kl_divergence()
    inside.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    outside = model.kl_divergence()
    outside.backward()
    torch.testing.assert_close(inside, outside)
    for got, expected in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected)


def test_posterior_list_follows_registration_changes():
    model = bnn.BayesianModule(_mlp())
    names = [name for name, _ in model.posteriors()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    kl_before = model.kl_divergence()

    bnn.remove_posterior(model.module[0], "weight")
    assert [name for name, _ in model.posteriors()] == names[1:]
    model.module[2] = nn.Linear(8, 8)
    assert [name for name, _ in model.posteriors()] == ["0.bias", "4.weight", "4.bias"]
    bnn.register_posterior(model.module[2], "bias")
    expected = ["module.0.bias", "module.2.bias", "module.4.weight", "module.4.bias"]
    assert [name for name, _ in bnn.posteriors(model)] == expected
    assert model.kl_divergence() < kl_before
