"""Generation with a Bayesian model, and the wrapped model's methods that `BayesianModule` passes through."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from torchbayesian import _sampling
from torchbayesian.estimators.base import sampled_weights

__all__ = ["MERGING", "PASSTHROUGH", "WeightSamples", "generate"]

PASSTHROUGH = frozenset({
    "activation_checkpointing_disable",
    "activation_checkpointing_enable",
    "active_adapter",
    "active_adapters",
    "can_generate",
    "config",
    "disable_input_require_grads",
    "enable_input_require_grads",
    "generation_config",
    "get_input_embeddings",
    "get_nb_trainable_parameters",
    "get_output_embeddings",
    "gradient_checkpointing_disable",
    "gradient_checkpointing_enable",
    "is_activation_checkpointing",
    "is_gradient_checkpointing",
    "main_input_name",
    "merge_and_unload",
    "peft_config",
    "print_trainable_parameters",
    "supports_gradient_checkpointing",
})
"""Attributes of the wrapped model that `BayesianModule` exposes as its own (Hugging Face and PEFT methods)."""

MERGING = frozenset({"merge_and_unload"})
"""Pass-through methods that `BayesianModule` runs with every posterior at its mean."""


class WeightSamples(str, Enum):
    """How `BayesianModule.generate` samples the weights."""

    SEQUENCE = "sequence"
    """One weight sample per generated sequence, held for all its decoding steps (one generate call per sequence)."""
    CALL = "call"
    """One weight sample for the whole call, shared by every sequence of the batch (one batched generate call)."""


def generate(
    model: nn.Module,
    *args: Any,
    weight_samples: WeightSamples | str = WeightSamples.SEQUENCE,
    **kwargs: Any,
) -> Tensor:
    """Run the wrapped model's ``generate`` with the weights held fixed within each sequence.

    See `BayesianModule.generate`.
    """
    inner = model.module
    if not hasattr(inner, "generate"):
        raise AttributeError(f"generate: the wrapped {type(inner).__name__} has no generate method.")
    try:
        mode = WeightSamples(weight_samples)
    except ValueError:
        raise ValueError(f"generate: weight_samples must be 'sequence' or 'call', got {weight_samples!r}.") from None
    if mode is WeightSamples.CALL:
        return _with_one_sample(inner, args, kwargs)
    if kwargs.get("return_dict_in_generate"):
        raise ValueError(
            "generate: return_dict_in_generate=True needs weight_samples='call' (one sample for the whole batch); "
            "with weight_samples='sequence' each sequence is generated apart and only the token ids are returned."
        )
    if len(args) > 1:
        raise TypeError("generate: pass the inputs as one positional tensor and keyword arguments.")
    inputs = {"inputs": args[0], **kwargs} if args else dict(kwargs)
    config = getattr(inner, "generation_config", None)
    returns = inputs.pop("num_return_sequences", None) or getattr(config, "num_return_sequences", None) or 1
    batch = _batch_size(inputs)
    sequences = []
    for row in range(batch):
        row_inputs = {key: _row(value, row, batch) for key, value in inputs.items()}
        for _ in range(returns):
            sequences.append(_with_one_sample(inner, (), {**row_inputs, "num_return_sequences": 1}))
    pad = kwargs.get("pad_token_id", getattr(config, "pad_token_id", None))
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    return _pad_right(sequences, 0 if pad is None else int(pad))


def _with_one_sample(inner: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    with _sampling.fresh_samples(), sampled_weights(inner):
        return inner.generate(*args, **kwargs)


def _batch_size(inputs: dict[str, Any]) -> int:
    for key in ("input_ids", "inputs", "inputs_embeds", "attention_mask"):
        value = inputs.get(key)
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1


def _row(value: Any, row: int, batch: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[row : row + 1]
    return value


def _pad_right(sequences: list[Tensor], pad: int) -> Tensor:
    length = max(sequence.shape[-1] for sequence in sequences)
    padded = [torch.nn.functional.pad(sequence, (0, length - sequence.shape[-1]), value=pad) for sequence in sequences]
    return torch.cat(padded, dim=0)
