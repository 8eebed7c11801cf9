"""Time one training step of a Bayesian model against its deterministic twin.

Each configuration (a model and a conversion policy) is built once per variant: the deterministic
model, the `GaussianPosterior` model and, when the library provides them, the Flipout and local
reparameterization models. A training step is forward, loss ``cross_entropy + KL / N``, backward
and an Adam step (``lr=1e-3``, the same optimizer settings for every variant). Each variant trains in its own
worker process, as a user's model would, so variants never share a heap (glibc's decisions to trim
it depend on every allocation in the process); the workers take their steps in turn, one at a time,
so load on a shared machine hits the variants alike. The table reports median step times, their
ratio to the deterministic step and, with ``--memory``, each worker's peak resident memory after its
imports (model, optimizer state and activations) relative to the deterministic one.

The Bayesian step is the loop a user writes, ``cross_entropy(model(x), y) + model.kl_divergence() / N``,
with no `bnn.reuse_samples` block. ``--runs`` repeats the whole measurement in that many fresh sets of
worker processes (glibc's heap decisions differ between processes, so one run can be lucky) and
reports the median ratio with the lowest and highest run.

Run ``python benchmarks/train_step.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
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


def _build(config: str, variant: str, device: str) -> _Case:
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
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
    return _Case(model.to(device), inputs, target.to(device))


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
    """Step every variant's worker in turn and return median step times, page faults and peak memory."""
    variants = _variants(config)
    workers = {}
    for variant in variants:
        command = [sys.executable, __file__, "--worker", config, variant, optimizer_name, "--warmup", str(args.warmup),
                   "--threads", str(args.threads), "--clock", args.clock, "--device", args.device]
        command += ["--compile"] * args.compile + ["--keep-freed-memory"] * args.keep_freed_memory
        worker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        _reply(worker)  # built and warmed up before the next worker starts
        workers[variant] = worker
    records: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.steps):
        for variant, worker in workers.items():
            records[variant].append(_request(worker, "step"))
    result = {}
    for variant, worker in workers.items():
        result[variant] = statistics.median(r["seconds"] for r in records[variant])
        result[f"{variant} faults"] = statistics.fmean(r["faults"] for r in records[variant])
        result[f"{variant} peak"] = _request(worker, "stop")["peak_bytes"]
        worker.wait()
    return result


def _request(worker: subprocess.Popen[str], command: str) -> dict[str, float]:
    assert worker.stdin is not None
    worker.stdin.write(command + "\n")
    return _reply(worker)


def _reply(worker: subprocess.Popen[str]) -> dict[str, float]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    if not line:
        raise RuntimeError(f"benchmark worker {worker.args} exited with status {worker.wait()}")
    return json.loads(line)


def _work(config: str, variant: str, optimizer_name: str, args: argparse.Namespace) -> None:
    """Serve ``step`` requests on stdin for one variant, answering each with its time and page faults."""
    if config.startswith("bert"):
        import transformers  # noqa: F401
    torch.randn(8).sum()
    baseline = _reset_peak_rss()
    step = _step_function(_build(config, variant, args.device), optimizer_name, args.compile)
    if args.device != "cpu":
        device_step = step

        def step() -> None:
            device_step()
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    clock = time.perf_counter if args.clock == "wall" or args.device != "cpu" else time.thread_time
    print(json.dumps({}), flush=True)
    for command in sys.stdin:
        if command.strip() != "step":
            print(json.dumps({"peak_bytes": _status_bytes("VmHWM") - baseline}), flush=True)
            return
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = clock()
        step()
        seconds = clock() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        print(json.dumps({"seconds": seconds, "faults": faults}), flush=True)


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


def _table(
    rows: list[tuple[str, str, list[dict[str, float]]]], variants: list[str], page_faults: bool, memory: bool
) -> str:
    """One row per model and optimizer: medians over runs, and the ratio's lowest and highest run when several."""
    bayes = [v for v in variants if v != "deterministic"]
    header = ["model", "optimizer", "deterministic (ms)"] + [f"{v} (ms, ratio)" for v in bayes]
    if page_faults:
        header += [f"{v} page faults/step" for v in variants]
    if memory:
        header += ["peak memory deterministic (MB)"] + [f"{v} memory ratio" for v in bayes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config, optimizer_name, runs in rows:
        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(run[key] for run in runs)

        base = median("deterministic")
        cells = [config, optimizer_name, f"{base * 1e3:.1f}"]
        for v in bayes:
            if v not in runs[0]:
                cells.append("-")
                continue
            ratios = sorted(run[v] / run["deterministic"] for run in runs)
            spread = f" [{ratios[0]:.2f}-{ratios[-1]:.2f}]" if len(runs) > 1 else ""
            cells.append(f"{median(v) * 1e3:.1f} ({statistics.median(ratios):.2f}{spread})")
        if page_faults:
            cells += [f"{median(f'{v} faults'):.0f}" if v in runs[0] else "-" for v in variants]
        if memory:
            det = median("deterministic peak")
            cells += [f"{det / 2**20:.0f}"]
            cells += [f"{median(f'{v} peak') / det:.2f}" if v in runs[0] else "-" for v in bayes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                        help="model configurations to time (default: all)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS),
                        help="adam: Adam(lr=1e-3) with torch's default implementation; adam-fused: Adam(fused=True).")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and run (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat everything in this many fresh sets of worker processes and report the spread")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every worker")
    parser.add_argument("--device", default="cpu",
                        help="device of the models and data, e.g. cpu or cuda (wall-clock time, synchronised)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: the thread's CPU time (robust to other processes on a shared machine; "
                        "use with --threads 1), wall: elapsed time")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile (inductor, fallback_random=True) the forward + loss + KL")
    parser.add_argument("--memory", action="store_true", help="also report each variant's peak resident memory")
    parser.add_argument("--page-faults", action="store_true",
                        help="also report minor page faults per step (memory the allocator got fresh from the kernel)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc only: keep freed memory in the process (mallopt M_TRIM_THRESHOLD and "
                        "M_MMAP_THRESHOLD, like the MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ variables), so "
                        "large temporaries reuse pages instead of faulting in fresh ones every step")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "VARIANT", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.keep_freed_memory:
        _keep_freed_memory()
    if args.worker:
        _work(*args.worker, args)
        return
    rows = []
    variants: list[str] = []
    for config in args.models:
        variants += [v for v in _variants(config) if v not in variants]
        for optimizer_name in args.optimizers:
            runs = [_time(config, optimizer_name, args) for _ in range(args.runs)]
            rows.append((config, optimizer_name, runs))
            print(_table(rows[-1:], _variants(config), args.page_faults, args.memory), flush=True)
    print()
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), {args.runs} run(s) of {args.steps} "
          f"timed steps after {args.warmup} warm-up steps, median {args.clock} time per step"
          f"{', torch.compile (inductor)' if args.compile else ''}"
          f"{', freed memory kept (mallopt)' if args.keep_freed_memory else ''}"
          f"; ratios: median [lowest-highest run]")
    print(_table(rows, variants, args.page_faults, args.memory))


if __name__ == "__main__":
    main()
