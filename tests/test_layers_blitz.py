"""Blitz parity of the drop-in layers: the peephole LSTM, forward_frozen, sample_weights and frozen_weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from torchbayesian import bnn


def _blitz_peephole(x: Tensor, W: Tensor, U: Tensor, bias: Tensor, c_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Blitz's peephole BayesianLSTM.forward_ loop, written out: x [B, T, F], W [F, 4H], U [H, 4H]."""
    HS = U.shape[0]
    hidden_seq = []
    h_t = c_t
    for t in range(x.shape[1]):
        x_t = x[:, t, :]
        gates = x_t @ W + c_t @ U + bias
        i_t, f_t, o_t = (
            torch.sigmoid(gates[:, :HS]),
            torch.sigmoid(gates[:, HS:HS * 2]),
            torch.sigmoid(gates[:, HS * 3:]),
        )
        c_t = f_t * c_t + i_t * torch.sigmoid(x_t @ W + bias)[:, HS * 2:HS * 3]
        h_t = torch.tanh(o_t * c_t)
        hidden_seq.append(h_t)
    return torch.stack(hidden_seq, dim=1), h_t, c_t


def _reference(lstm: nn.Module, x: Tensor, suffix: str, c0: Tensor, reverse: bool = False) -> tuple[Tensor, ...]:
    weights = lstm.frozen_weights()
    bias = weights[f"bias_ih_{suffix}"] + weights[f"bias_hh_{suffix}"]
    inputs = x.flip(1) if reverse else x
    out, h, c = _blitz_peephole(inputs, weights[f"weight_ih_{suffix}"].T, weights[f"weight_hh_{suffix}"].T, bias, c0)
    return (out.flip(1) if reverse else out), h, c


def test_peephole_lstm_matches_blitz_cell() -> None:
    torch.manual_seed(0)
    lstm = bnn.LSTM(3, 5, batch_first=True, peephole=True, freeze=True)
    x = torch.randn(4, 6, 3)
    c0 = torch.randn(1, 4, 5)
    output, (h_n, c_n) = lstm(x, (torch.randn(1, 4, 5), c0))
    expected, h, c = _reference(lstm, x, "l0", c0[0])
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(c_n[0], c)
    plain, _ = nn.LSTM(3, 5, batch_first=True).eval()(x)
    assert plain.shape == output.shape


def test_deep_bidirectional_peephole_lstm_composes_blitz_cells() -> None:
    torch.manual_seed(1)
    lstm = bnn.LSTM(3, 4, num_layers=2, bidirectional=True, peephole=True, freeze=True)  # sequence-first
    x = torch.randn(5, 2, 3)
    output, (h_n, c_n) = lstm(x)
    zeros = torch.zeros(2, 4)
    batch_first = x.transpose(0, 1)
    forward = _reference(lstm, batch_first, "l0", zeros)
    backward = _reference(lstm, batch_first, "l0_reverse", zeros, reverse=True)
    second = torch.cat([forward[0], backward[0]], dim=-1)
    top_forward = _reference(lstm, second, "l1", zeros)
    top_backward = _reference(lstm, second, "l1_reverse", zeros, reverse=True)
    torch.testing.assert_close(output, torch.cat([top_forward[0], top_backward[0]], dim=-1).transpose(0, 1))
    torch.testing.assert_close(h_n, torch.stack([forward[1], backward[1], top_forward[1], top_backward[1]]))
    torch.testing.assert_close(c_n, torch.stack([forward[2], backward[2], top_forward[2], top_backward[2]]))
    unbatched, (h_single, _) = lstm(x[:, 0])
    torch.testing.assert_close(unbatched, output[:, 0])
    assert h_single.shape == (4, 4)


def test_peephole_lstm_samples_trains_freezes_and_exports() -> None:
    torch.manual_seed(2)
    model = bnn.Sequential(bnn.LSTM(3, 4, batch_first=True, peephole=True))
    lstm = model[0]
    x = torch.randn(2, 5, 3)
    assert len(list(lstm.posteriors())) == 4
    assert not torch.equal(lstm(x)[0], lstm(x)[0])
    loss = lstm(x)[0].pow(2).mean() + lstm.kl_divergence() / 100
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lstm.parameters())
    with bnn.frozen(lstm):
        mean_output = lstm(x)[0]
        assert torch.equal(mean_output, lstm(x)[0])
    torch.testing.assert_close(lstm.forward_frozen(x)[0], mean_output)
    plain = bnn.to_deterministic(lstm)
    assert plain.peephole and not bnn.is_bayesian(plain)
    torch.testing.assert_close(plain(x)[0], mean_output)
    copy = bnn.LSTM(3, 4, batch_first=True, peephole=True)
    copy.load_state_dict(lstm.state_dict())
    torch.testing.assert_close(copy.forward_frozen(x)[0], mean_output)
    from_plain = bnn.LSTM(3, 4, batch_first=True, peephole=True)
    bnn.load_deterministic_state_dict(from_plain, plain.state_dict())  # means from a deterministic checkpoint
    torch.testing.assert_close(from_plain.forward_frozen(x)[0], mean_output)
    assert "peephole=True" in repr(lstm)


def test_peephole_lstm_errors() -> None:
    with pytest.raises(ValueError, match="proj_size"):
        bnn.LSTM(3, 4, proj_size=2, peephole=True)
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 2), torch.randn(2, 2)])
    with pytest.raises(NotImplementedError, match="PackedSequence"):
        bnn.LSTM(2, 3, peephole=True)(packed)


@pytest.mark.parametrize("layer, x", [
    (lambda: bnn.Linear(4, 3), torch.randn(2, 4)),
    (lambda: bnn.Conv2d(2, 3, 3), torch.randn(1, 2, 5, 5)),
    (lambda: bnn.Embedding(7, 3), torch.tensor([1, 4, 6])),
    (lambda: bnn.GRU(3, 4), torch.randn(5, 2, 3)),
])
def test_forward_frozen_uses_means_and_leaves_sampling_on(layer, x) -> None:
    torch.manual_seed(3)
    layer = layer()
    frozen = layer.forward_frozen(x)
    with bnn.frozen(layer):
        expected = layer(x)
    torch.testing.assert_close(frozen, expected)
    assert not any(posterior.frozen for _, posterior in layer.posteriors())
    first, second = layer(x), layer(x)
    first, second = (first[0], second[0]) if isinstance(first, tuple) else (first, second)
    assert not torch.equal(first, second)


def test_sample_weights_and_frozen_weights() -> None:
    torch.manual_seed(4)
    layer = bnn.Linear(3, 2, freeze=True)
    means = layer.frozen_weights()
    assert sorted(means) == ["bias", "weight"]
    torch.testing.assert_close(means["weight"], layer.weight)  # frozen: the layer uses the means
    draws = torch.stack([layer.sample_weights()["weight"] for _ in range(2000)])
    posterior = dict(layer.posteriors())["weight"]
    torch.testing.assert_close(draws.mean(0), posterior.mean, atol=4 * posterior.distribution.stddev.max().item() / 40,
                               rtol=0)
    torch.testing.assert_close(draws.std(0), posterior.distribution.stddev, rtol=0.1, atol=0)
    sample = layer.sample_weights()["weight"]
    sample.sum().backward()
    assert posterior.mu.grad is not None and posterior.rho.grad is not None


@settings(max_examples=12, deadline=None)
@given(
    num_layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(), batched=st.booleans(),
    length=st.integers(1, 4), dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_peephole_lstm_shapes_match_nn_lstm(num_layers, bidirectional, batch_first, batched, length, dtype) -> None:
    options = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    peephole = bnn.LSTM(3, 4, peephole=True, **options).to(dtype)
    reference = nn.LSTM(3, 4, **options).to(dtype)
    x = torch.randn(*((2, length) if batch_first else (length, 2)) if batched else (length,), 3, dtype=dtype)
    output, (h, c) = peephole(x)
    expected, (h_ref, c_ref) = reference(x)
    assert output.shape == expected.shape and output.dtype == dtype
    assert h.shape == h_ref.shape and c.shape == c_ref.shape
    assert torch.isfinite(output).all()


def test_sampled_peephole_lstm_uses_one_draw_for_all_time_steps() -> None:
    torch.manual_seed(5)
    lstm = bnn.LSTM(3, 4, batch_first=True, peephole=True, posterior_rho_init=-2.0)
    x = torch.randn(2, 6, 3)
    output, _ = lstm(x)
    drawn = {name: posterior.last_sample for name, posterior in lstm.posteriors()}
    expected, _, _ = _blitz_peephole(x, drawn["weight_ih_l0"].T, drawn["weight_hh_l0"].T,
                                     drawn["bias_ih_l0"] + drawn["bias_hh_l0"], torch.zeros(2, 4))
    torch.testing.assert_close(output, expected)
