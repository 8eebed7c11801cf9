"""Monte Carlo dropout: stochastic in evaluation mode while enabled, exactly plain evaluation once removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbayesian import bnn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(32, 32), nn.AlphaDropout(0.2), nn.Linear(32, 3),
    ).eval()


def test_samples_differ_in_eval_mode_and_match_plain_eval_once_removed() -> None:
    net, x = _net(), torch.randn(8, 6)
    with torch.no_grad():
        plain = net(x)
        handle = bnn.enable_mc_dropout(net)
        first, second = net(x), net(x)
        assert not torch.allclose(first, second)
        assert not net.training and not net[3].training  # flags unchanged outside the forward
        handle.remove()
        torch.testing.assert_close(net(x), plain, rtol=0, atol=0)
    assert not handle.active
    assert handle.module_names == ["3", "5"]


def test_batch_norm_keeps_running_statistics() -> None:
    net, x = _net(), torch.randn(8, 6)
    mean = net[1].running_mean.clone()
    with torch.no_grad(), bnn.enable_mc_dropout(net):
        net(x)
    torch.testing.assert_close(net[1].running_mean, mean, rtol=0, atol=0)
    assert int(net[1].num_batches_tracked) == 0


def test_context_manager_and_nesting_restore_flags() -> None:
    net, x = _net(), torch.randn(4, 6)
    with torch.no_grad():
        plain = net(x)
        with bnn.enable_mc_dropout(net):
            with bnn.enable_mc_dropout(net):
                net(x)
            assert not torch.equal(net(x), net(x))
        torch.testing.assert_close(net(x), plain, rtol=0, atol=0)
    net.train()
    with bnn.enable_mc_dropout(net):
        net(x)
    assert net[3].training  # train mode is kept, not overwritten by the handle


def test_flag_is_restored_when_forward_raises() -> None:
    net = _net()
    with bnn.enable_mc_dropout(net), pytest.raises(RuntimeError):
        net(torch.randn(4, 5))  # wrong width
    assert not net[3].training


def test_predict_vectorises_and_feeds_uncertainty_measures() -> None:
    net, x = _net(), torch.randn(10, 6)
    with torch.no_grad(), bnn.enable_mc_dropout(net):
        looped = bnn.predict(net, x, num_samples=64, vectorize=False)
        batched = bnn.predict(net, x, num_samples=64, vectorize=True)
    assert batched.shape == looped.shape == (64, 10, 3)
    assert batched.std(0).mean() > 0.01
    # Both paths sample the same predictive distribution.
    torch.testing.assert_close(batched.mean(0), looped.mean(0), atol=0.25, rtol=0)
    epistemic = bnn.epistemic_uncertainty(batched, from_logits=True)
    assert epistemic.shape == (10,) and bool((epistemic > 0).all())
    with torch.no_grad():
        deterministic = bnn.predict(net, x, num_samples=4)
    assert torch.equal(deterministic[0], deterministic[3])  # removed: every draw is the plain output
    assert torch.all(bnn.epistemic_uncertainty(deterministic, from_logits=True).abs() < 1e-5)


def test_multihead_attention_dropout_is_kept() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        plain = attention(x, x, x)[0]
        with bnn.enable_mc_dropout(attention):
            assert not torch.allclose(attention(x, x, x)[0], plain)
        with pytest.raises(ValueError, match="has no dropout layer"):
            bnn.enable_mc_dropout(attention, attention=False)
        torch.testing.assert_close(attention(x, x, x)[0], plain, rtol=0, atol=0)


def test_huggingface_dropout_and_attention_dropout() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        plain = model(input_ids=tokens).last_hidden_state
        with bnn.enable_mc_dropout(model) as handle:
            # Only the attention-probability dropout is non-zero: it must be the one kept.
            assert not torch.allclose(model(input_ids=tokens).last_hidden_state, plain)
        assert "encoder.layer.0.attention.self" in handle.module_names
        torch.testing.assert_close(model(input_ids=tokens).last_hidden_state, plain, rtol=0, atol=0)


def test_named_dropout_classes_are_dropout() -> None:
    class StableDropout(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (torch.rand_like(x) > 0.5) if self.training else x

    net = nn.Sequential(nn.Linear(3, 3), StableDropout()).eval()
    assert bnn.is_dropout(net[1])
    x = torch.randn(4, 3)
    with torch.no_grad(), bnn.enable_mc_dropout(net):
        assert not torch.equal(net(x), net(x))


def test_errors() -> None:
    with pytest.raises(TypeError, match="must be an nn.Module"):
        bnn.enable_mc_dropout("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Sequential has no dropout layer"):
        bnn.enable_mc_dropout(nn.Sequential(nn.Linear(2, 2)))


def test_torch_transformer_encoder_leaves_its_fused_inference_path() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.3, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, -1] = True
    with torch.no_grad():
        plain = encoder(x, src_key_padding_mask=mask)
        with bnn.enable_mc_dropout(encoder, attention=False):
            first, second = (encoder(x, src_key_padding_mask=mask) for _ in range(2))
            assert not torch.allclose(first, second)
            assert not encoder.layers[0].training
        torch.testing.assert_close(encoder(x, src_key_padding_mask=mask), plain)
