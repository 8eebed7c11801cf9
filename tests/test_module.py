import pytest
import torch
from torch import nn

from tests.models import MODELS, TiedLanguageModel, inputs_for
from torchbayesian import bnn


def _variational(model: bnn.BayesianModule) -> set[int]:
    return {id(p) for _, q in model.posteriors() for p in q.parameters(recurse=False)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_frozen_output_equals_the_original_model(name: str) -> None:
    net = MODELS[name]().eval()
    x = inputs_for(name)
    expected = net(x)
    model = bnn.BayesianModule(net)
    with bnn.frozen(model):
        assert torch.equal(model(x), expected)
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimizer_sees_variational_and_deterministic_norm_parameters_only(name: str) -> None:
    net = MODELS[name]()
    n_original = sum(p.numel() for p in net.parameters())
    model = bnn.BayesianModule(net)
    variational = _variational(model)
    for qualified_name, param in model.named_parameters():
        if id(param) not in variational:
            assert "norm" in qualified_name.lower() or ".1." in qualified_name, qualified_name
    n_bayesian = sum(p.numel() for _, q in model.posteriors() for p in q.parameters(recurse=False)) // 2
    n_deterministic = sum(p.numel() for p in model.parameters() if id(p) not in variational)
    assert n_bayesian + n_deterministic == n_original
    model.kl_divergence().backward()
    assert all(p.grad is not None for p in model.parameters() if id(p) in variational)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_layers_use_the_sampled_weights(name: str) -> None:
    model = bnn.BayesianModule(MODELS[name]())
    tokens = inputs_for(name)
    rnn_posteriors = [q for n, q in model.posteriors() if n.startswith("rnn.")]
    assert len(rnn_posteriors) == 16
    for q in rnn_posteriors:
        q.frozen = True
    with bnn.frozen(model):
        reference = model(tokens)
    for q in rnn_posteriors:
        q.frozen = False
    # Only the recurrent weights sample: any change in the output comes from them.
    for _, q in model.posteriors():
        q.frozen = q not in rnn_posteriors
    assert not torch.equal(model(tokens), reference)


def test_batchnorm_stays_deterministic_and_include_overrides() -> None:
    net = MODELS["cnn"]()
    model = bnn.BayesianModule(net)
    assert not bnn.is_bayesian(net[1]) and isinstance(net[1].weight, nn.Parameter)
    assert {name for name, _ in model.posteriors()} == {"0.weight", "0.bias", "5.weight", "5.bias"}
    model = bnn.BayesianModule(MODELS["cnn"](), include=[nn.BatchNorm2d])
    assert {name for name, _ in model.posteriors()} == {"1.weight", "1.bias"}


def test_include_and_exclude_by_glob_and_type() -> None:
    model = bnn.BayesianModule(MODELS["mlp"](), include="2.*")
    assert [name for name, _ in model.posteriors()] == ["2.weight", "2.bias"]
    model = bnn.BayesianModule(MODELS["mlp"](), exclude=["*.bias"])
    assert [name for name, _ in model.posteriors()] == ["0.weight", "2.weight"]
    model = bnn.BayesianModule(MODELS["lstm"](), exclude=nn.LSTM)
    assert [name for name, _ in model.posteriors()] == ["embedding.weight", "head.weight", "head.bias"]
    with pytest.raises(TypeError, match="include entries must be nn.Module subclasses or glob strings"):
        bnn.BayesianModule(MODELS["mlp"](), include=[3])  # type: ignore[list-item]


def test_an_include_that_selects_nothing_is_an_error_and_changes_nothing() -> None:
    net = MODELS["mlp"]()
    with pytest.raises(ValueError, match=r"include='head\.\*' selects no trainable floating-point parameter of "
                                         r"Sequential; its trainable parameters are: 0\.weight, 0\.bias, 2\.weight"):
        bnn.BayesianModule(net, include="head.*")
    assert not bnn.is_bayesian(net)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="it has none"):
        bnn.BayesianModule(net, include=nn.Linear)


@pytest.mark.parametrize(("build", "reason"), [
    (lambda: MODELS["mlp"]().requires_grad_(False), "it has no trainable floating-point parameter"),
    (lambda: nn.Sequential(nn.LayerNorm(3)), "its trainable parameters all belong to normalization layers"),
    (lambda: nn.Sequential(nn.Linear(3, 3)), "exclude=<class 'torch.nn.modules.linear.Linear'> leaves none"),
])
@pytest.mark.parametrize("convert", [bnn.BayesianModule, bnn.to_bayesian])
def test_a_conversion_that_makes_nothing_bayesian_warns(build, reason, convert) -> None:
    exclude = nn.Linear if "exclude" in reason else None
    with pytest.warns(UserWarning, match=f"no parameter of Sequential was made Bayesian: {reason}") as caught:
        model = convert(build(), exclude=exclude)
    assert caught[0].filename == __file__  # reported at the user's call, whatever the entry point's depth
    assert list(model.posteriors()) == []


def test_frozen_parameters_stay_untouched_and_out_of_the_kl() -> None:
    net = MODELS["mlp"]()
    net[0].weight.requires_grad_(False)
    frozen_weight = net[0].weight
    model = bnn.BayesianModule(net)
    assert net[0].weight is frozen_weight and not frozen_weight.requires_grad
    assert "0.weight" not in dict(model.posteriors())
    assert len(list(model.posteriors())) == 3


def test_tied_weights_share_one_posterior_and_one_sample() -> None:
    net = TiedLanguageModel()
    ids = torch.randint(0, 12, (2, 5))
    model = bnn.BayesianModule(net)
    embedding_q = net.embedding.parametrizations.weight[0]
    assert net.decoder.parametrizations.weight[0] is embedding_q
    seen: list[torch.Tensor] = []
    net.decoder.register_forward_pre_hook(lambda m, _: seen.append(m.weight))
    net.embedding.register_forward_pre_hook(lambda m, _: seen.append(m.weight))
    model(ids)
    assert len(seen) == 2 and seen[0] is seen[1]
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 2 * (12 * 8 + 8 * 8 + 8)


class _Head(nn.Module):
    """An output head owning a bias that its Linear decoder shares (like BERT's MLM head)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(4, 3)
        self.bias = self.decoder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x)


@pytest.mark.parametrize("include", [nn.Linear, "decoder.bias", ["bias"]])
def test_a_tied_tensor_is_bayesian_when_any_of_its_names_is_selected(include) -> None:
    head = _Head()
    model = bnn.BayesianModule(head, include=include)
    assert bnn.is_bayesian(head, "bias") and bnn.is_bayesian(head.decoder, "bias")
    posterior = head.parametrizations.bias[0]
    assert head.decoder.parametrizations.bias[0] is posterior
    assert sum(q is posterior for _, q in model.posteriors()) == 1
    assert bnn.is_bayesian(head.decoder, "weight") == (include is nn.Linear)


def test_a_tied_tensor_stays_deterministic_when_any_of_its_names_is_excluded() -> None:
    for exclude in ("bias", "decoder.bias", _Head):
        head = _Head()
        bnn.BayesianModule(head, include=nn.Linear, exclude=exclude)
        assert not bnn.is_bayesian(head, "bias") and not bnn.is_bayesian(head.decoder, "bias"), exclude
        assert head.bias is head.decoder.bias


def test_forward_passes_keywords_and_returns_the_output_unchanged() -> None:
    model = bnn.BayesianModule(TiedLanguageModel())
    ids, mask = torch.randint(0, 12, (2, 5)), torch.ones(2, 5)
    out = model(ids, attention_mask=mask)
    assert isinstance(out, dict) and set(out) == {"logits", "hidden"} and out["logits"].shape == (2, 5, 12)


def test_freeze_unfreeze_and_frozen_context() -> None:
    model = bnn.BayesianModule(MODELS["mlp"]())
    x = inputs_for("mlp")
    model.eval()
    assert not torch.equal(model(x), model(x)), "eval mode still samples"
    assert model.freeze() is model
    assert torch.equal(model(x), model(x))
    model.unfreeze()
    with bnn.frozen(model) as inner:
        assert inner is model and torch.equal(model(x), model(x))
    assert not torch.equal(model(x), model(x))


def test_wrapping_twice_or_wrong_types_is_an_error() -> None:
    model = bnn.BayesianModule(MODELS["mlp"]())
    with pytest.raises(ValueError, match="already holds posteriors"):
        bnn.BayesianModule(model)
    with pytest.raises(ValueError, match="already holds posteriors"):
        bnn.BayesianModule(model.module)
    with pytest.raises(TypeError, match="expects an nn.Module, got str"):
        bnn.BayesianModule("mlp")  # type: ignore[arg-type]


def test_failed_conversion_leaves_the_model_untouched() -> None:
    net = MODELS["mlp"]()
    with pytest.raises(ValueError, match="sigma_init"):
        bnn.BayesianModule(net, sigma_init=0.0)
    assert not bnn.is_bayesian(net) and type(net[0]) is nn.Linear
