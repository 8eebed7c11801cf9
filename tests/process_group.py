"""Launching the worker processes of the multi-process tests (DDP, Lightning DDP) on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_workers(test_file: str, out: Path, *, world: int, timeout_s: float, weights_only: bool = True) -> list[Any]:
    """Run ``_worker(rank, port, out)`` of ``test_file`` in ``world`` fresh interpreters; return each rank's file.

    Each worker saves its result to ``out / f"rank{rank}.pt"``. Fresh interpreters rather than
    fork: forking a process that already ran torch code can deadlock. The test fails when a
    worker fails (with its log) or when they do not all finish within ``timeout_s``.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if "GLOO_SOCKET_IFNAME" not in env and any(name == "lo" for _, name in socket.if_nameindex()):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        f"spec = importlib.util.spec_from_file_location('_worker_module', {test_file!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module._worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(rank), str(port), str(out)], cwd=out,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for rank in range(world)
    ]
    deadline = time.monotonic() + timeout_s
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=max(deadline - time.monotonic(), 1.0))[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {world} workers of {Path(test_file).name} did not finish within {timeout_s} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=weights_only) for rank in range(world)]
