import math

import pytest
import torch

from torchbayesian import bnn


def _nll(draws: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    log_probs = torch.log_softmax(draws.double() / temperature, dim=-1)
    log_predictive = torch.logsumexp(log_probs, dim=0) - math.log(draws.shape[0])
    return -log_predictive.gather(-1, targets[:, None]).mean().item()


def _overconfident(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    true_logits = torch.randn(400, 5, generator=generator)
    targets = torch.distributions.Categorical(logits=true_logits).sample()
    return 4 * true_logits, targets  # the right ranking, four times too confident


def test_recovers_the_temperature_of_overconfident_logits():
    logits, targets = _overconfident()
    temperature = bnn.fit_temperature(logits, targets)
    assert temperature.dtype == torch.float64 and temperature.shape == ()
    assert 3.0 < temperature.item() < 5.5
    grid = torch.linspace(0.5, 8.0, 301)
    best = min(grid.tolist(), key=lambda t: _nll(logits[None], targets, t))
    assert _nll(logits[None], targets, temperature.item()) <= _nll(logits[None], targets, best) + 1e-6


def test_monte_carlo_logits_are_scaled_per_draw_then_averaged():
    logits, targets = _overconfident(1)
    draws = logits + 0.5 * torch.randn(8, *logits.shape, generator=torch.Generator().manual_seed(2))
    temperature = bnn.fit_temperature(draws, targets).item()
    for other in (0.9 * temperature, 1.1 * temperature):
        assert _nll(draws, targets, temperature) < _nll(draws, targets, other)


def test_calibrated_logits_keep_temperature_near_one():
    generator = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(4000, 3, generator=generator)
    targets = torch.distributions.Categorical(logits=logits).sample()
    assert bnn.fit_temperature(logits, targets).item() == pytest.approx(1.0, abs=0.1)


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="logits must be a floating-point Tensor"):
        bnn.fit_temperature(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="targets must be an integer Tensor"):
        bnn.fit_temperature(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"logits shape: \(3, 2\)\ntargets shape: \(4,\)"):
        bnn.fit_temperature(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
