"""Time one training step of a Bayesian model against its deterministic twin.

Each configuration (a model and a conversion policy) is built once per variant: the deterministic
model, the `GaussianPosterior` model and, when the library provides them, the Flipout and local
reparameterization models. A training step is forward, loss ``cross_entropy + KL / N``, backward
and an Adam step (``lr=1e-3``, the same optimizer settings for every variant); the Bayesian step
computes the loss and the KL inside one `bnn.reuse_samples` block. Variants are interleaved step
by step, so load on a shared machine hits them alike, and the table reports median step times,
their ratio to the deterministic step and, with ``--memory``, the peak resident memory of the
training loop (model, optimizer state and activations; the peak-RSS counter of a fresh subprocess
per variant, reset after the imports) relative to the deterministic one.

Run ``python benchmarks/train_step.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchbayesian import bnn

__all__ = ["main"]

DATASET_SIZE = 60_000
CONFIGS = ("mlp", "lenet", "bert-linear", "bert-policy", "bert-default")
OPTIMIZERS = ("adam", "adam-fused")


@dataclass
class _Case:
    model: nn.Module
    inputs: dict[str, Tensor]
    target: Tensor


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1200), nn.ReLU(), nn.Linear(1200, 1200), nn.ReLU(), nn.Linear(1200, 10)
    )


def _lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512, num_labels=2,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def _build(config: str, variant: str) -> _Case:
    torch.manual_seed(0)
    if config == "mlp":
        model: nn.Module = _mlp()
        inputs = {"input": torch.randn(128, 1, 28, 28)}
        target = torch.randint(0, 10, (128,))
    elif config == "lenet":
        model = _lenet()
        inputs = {"input": torch.randn(128, 1, 28, 28)}
        target = torch.randint(0, 10, (128,))
    else:
        model = _bert()
        inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (16, 128))}
        target = torch.randint(0, 2, (16,))
    if variant != "deterministic":
        if config == "bert-linear":
            policy: dict[str, Any] = {"include": nn.Linear}
        elif config == "bert-policy":
            policy = bnn.transformer_policy(model)
        else:
            policy = {}
        model = bnn.BayesianModule(model, _posterior(variant), **policy)
    return _Case(model, inputs, target)


def _posterior(variant: str) -> type[bnn.VariationalPosterior]:
    return {
        "gaussian": bnn.GaussianPosterior,
        "flipout": getattr(bnn, "FlipoutPosterior", None),
        "lrt": getattr(bnn, "LocalReparameterizationPosterior", None),
    }[variant]


def _variants(config: str) -> list[str]:
    variants = ["deterministic", "gaussian"]
    if config not in ("bert-policy", "bert-default"):
        variants += [name for name, attr in (("flipout", "FlipoutPosterior"),
                                             ("lrt", "LocalReparameterizationPosterior")) if hasattr(bnn, attr)]
    return variants


def _logits(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.logits


def _step_function(case: _Case, optimizer_name: str, compile_model: bool) -> Callable[[], None]:
    model = case.model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=optimizer_name == "adam-fused" or None)
    bayesian = isinstance(model, bnn.BayesianModule)

    def loss_fn(inputs: dict[str, Tensor], target: Tensor) -> Tensor:
        if not bayesian:
            return F.cross_entropy(_logits(model(**inputs)), target)
        with bnn.reuse_samples():
            return F.cross_entropy(_logits(model(**inputs)), target) + model.kl_divergence() / DATASET_SIZE

    if compile_model:
        # Inductor's own CPU random generator is several times slower than aten's vectorised one.
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        loss_fn = torch.compile(loss_fn)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(case.inputs, case.target).backward()
        optimizer.step()

    return step


def _time(config: str, optimizer_name: str, args: argparse.Namespace) -> dict[str, float]:
    variants = _variants(config)
    steps = {v: _step_function(_build(config, v), optimizer_name, args.compile) for v in variants}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    times: dict[str, list[float]] = {v: [] for v in variants}
    faults = dict.fromkeys(variants, 0)
    for _ in range(args.steps):
        for variant, step in steps.items():
            gc.collect()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = clock()
            step()
            times[variant].append(clock() - start)
            faults[variant] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    result = {v: statistics.median(t) for v, t in times.items()}
    result.update({f"{v} faults": faults[v] / args.steps for v in variants})
    return result


def _keep_freed_memory() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_trim_threshold, 2**30) and libc.mallopt(m_mmap_threshold, 2**28)):
        raise RuntimeError("mallopt failed: --keep-freed-memory needs glibc")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0) and return the current RSS."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _probe_memory(config: str, variant: str, optimizer_name: str, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    if config.startswith("bert"):
        import transformers  # noqa: F401
    torch.randn(8).sum()
    baseline = _reset_peak_rss()
    step = _step_function(_build(config, variant), optimizer_name, args.compile)
    for _ in range(args.warmup + 2):
        step()
    print(json.dumps({"peak_bytes": _status_bytes("VmHWM") - baseline}))


def _memory(config: str, optimizer_name: str, args: argparse.Namespace) -> dict[str, float]:
    peaks = {}
    for variant in _variants(config):
        command = [sys.executable, __file__, "--probe", config, variant, optimizer_name,
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]
        if args.compile:
            command.append("--compile")
        if args.keep_freed_memory:
            command.append("--keep-freed-memory")
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ))
        peaks[variant] = json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]
    return peaks


def _table(
    rows: list[tuple[str, str, dict[str, float], dict[str, float] | None]], variants: list[str], page_faults: bool
) -> str:
    bayes = [v for v in variants if v != "deterministic"]
    header = ["model", "optimizer", "deterministic (ms)"] + [f"{v} (ms, ratio)" for v in bayes]
    if page_faults:
        header += [f"{v} page faults/step" for v in variants]
    if any(memory for *_, memory in rows):
        header += ["peak memory deterministic (MB)"] + [f"{v} memory ratio" for v in bayes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config, optimizer_name, times, memory in rows:
        base = times["deterministic"]
        cells = [config, optimizer_name, f"{base * 1e3:.1f}"]
        cells += [f"{times[v] * 1e3:.1f} ({times[v] / base:.2f})" if v in times else "-" for v in bayes]
        if page_faults:
            cells += [f"{times[f'{v} faults']:.0f}" if v in times else "-" for v in variants]
        if memory:
            det = memory["deterministic"]
            cells += [f"{det / 2**20:.0f}"] + [f"{memory[v] / det:.2f}" if v in memory else "-" for v in bayes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS),
                        help="adam: Adam(lr=1e-3) with torch's default implementation; adam-fused: Adam(fused=True).")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the thread's CPU time (robust to other processes on a shared machine; "
                        "use with --threads 1), wall: elapsed time")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile (inductor, fallback_random=True) the forward + loss + KL")
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS, one subprocess per variant")
    parser.add_argument("--page-faults", action="store_true",
                        help="also report minor page faults per step (memory the allocator got fresh from the kernel)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc only: keep freed memory in the process (mallopt M_TRIM_THRESHOLD and "
                        "M_MMAP_THRESHOLD, like the MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ variables), so "
                        "large temporaries reuse pages instead of faulting in fresh ones every step")
    parser.add_argument("--probe", nargs=3, metavar=("MODEL", "VARIANT", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.keep_freed_memory:
        _keep_freed_memory()
    if args.probe:
        _probe_memory(*args.probe, args)
        return
    rows = []
    variants: list[str] = []
    for config in args.models:
        variants += [v for v in _variants(config) if v not in variants]
        for optimizer_name in args.optimizers:
            times = _time(config, optimizer_name, args)
            memory = _memory(config, optimizer_name, args) if args.memory else None
            rows.append((config, optimizer_name, times, memory))
            print(_table(rows[-1:], _variants(config), args.page_faults), flush=True)
    print()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} timed steps after {args.warmup} "
          f"warm-up steps, median {args.clock} time per step{', torch.compile (inductor)' if args.compile else ''}"
          f"{', freed memory kept (mallopt)' if args.keep_freed_memory else ''}")
    print(_table(rows, variants, args.page_faults))


if __name__ == "__main__":
    main()
