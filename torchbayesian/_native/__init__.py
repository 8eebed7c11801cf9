"""Fused CPU kernels, compiled from C on first use with the system compiler.

The kernels replace chains of element-wise torch operations on float32 CPU tensors (the weight
sample, the softplus, the closed-form KL and their gradients) with one pass each, and draw their
standard normals from a vectorised counter-based generator seeded from torch's default generator,
so ``torch.manual_seed`` still makes runs reproducible. One more kernel computes the weight
gradient of a single-input-channel 2-D convolution for the estimators' second path. Where they do
not apply (another device or dtype, tensor subclasses, ``torch.compile`` tracing, ``torch.func``
transforms) or no C compiler is found, the library runs the equivalent torch operations. Set
``TORCHBAYESIAN_NATIVE=0`` to always use the torch operations.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["address", "applies", "library", "run_parallel", "split", "unavailable_reason"]

_SOURCES = tuple(sorted(Path(__file__).parent.glob("*.c")))
_COMPILE_FLAGS = (
    "-O3", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math",
)
_PLAIN_TYPES = (Tensor, nn.Parameter)
_BLOCK = 512  # the kernels' block (BLOCK in gaussian.c): threads split tensors at multiples of it
_MIN_ELEMENTS_PER_THREAD = 1 << 16

_library: ctypes.CDLL | None = None
_executor: tuple[int, ThreadPoolExecutor] | None = None
_reason: str | None = None
_loaded = False


def applies(*tensors: Tensor) -> bool:
    """Return whether the fused kernels can run on ``tensors`` (float32, contiguous, CPU, eager)."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    for tensor in tensors:
        if (
            type(tensor) not in _PLAIN_TYPES
            or tensor.dtype != torch.float32
            or tensor.device.type != "cpu"
            or not tensor.is_contiguous()
        ):
            return False
    return library() is not None


def library() -> ctypes.CDLL | None:
    """Return the compiled kernels, building them on the first call; ``None`` when unavailable."""
    global _library, _reason, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("TORCHBAYESIAN_NATIVE", "1") == "0":
            _reason = "disabled by TORCHBAYESIAN_NATIVE=0"
        else:
            try:
                _library = _declare(ctypes.CDLL(str(_build())))
            except (OSError, subprocess.SubprocessError) as error:
                _reason = f"could not build the C kernels: {error}"
    return _library


def address(tensor: Tensor | None, offset: int = 0) -> int | None:
    """Address of element ``offset`` of a contiguous ``tensor``; ``None`` for ``None``."""
    return None if tensor is None else tensor.data_ptr() + offset * tensor.element_size()


def split(n: int, call: Callable[[int, int, int], object]) -> int:
    """Run ``call(index, offset, count)`` over the elements ``[0, n)``, split between torch's threads.

    Spans start at multiples of the kernels' block, so every split draws the same random numbers;
    ``index`` numbers the spans. Returns the number of spans. The kernels release the GIL, so the
    spans run in parallel on a thread pool (the calling thread takes the first).
    """
    threads = max(1, min(torch.get_num_threads(), n // _MIN_ELEMENTS_PER_THREAD))
    if threads == 1:
        call(0, 0, n)
        return 1
    per_thread = -(-n // threads)
    size = max(_BLOCK, -(-per_thread // _BLOCK) * _BLOCK)
    spans = [(index, offset, min(size, n - offset)) for index, offset in enumerate(range(0, n, size))] or [(0, 0, 0)]
    run_parallel(call, spans)
    return len(spans)


def run_parallel(call: Callable[..., object], arguments: Sequence[tuple[Any, ...]]) -> None:
    """Run ``call(*args)`` for every tuple in ``arguments`` on the thread pool, the calling thread taking the first.

    The kernels release the GIL, so the calls run in parallel; an exception in any call is raised here.
    """
    pending = [_pool().submit(call, *args) for args in arguments[1:]]
    call(*arguments[0])
    for future in pending:
        future.result()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None or _executor[0] != os.getpid():  # a forked child gets a pool of its own
        _executor = os.getpid(), ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="torchbayesian")
    return _executor[1]


def unavailable_reason() -> str | None:
    """Why the fused kernels are not used, or ``None`` when they are."""
    library()
    return _reason


def _build() -> Path:
    compiler = os.environ.get("CC", "cc")
    sources = b"".join(source.read_bytes() for source in _SOURCES)
    key = hashlib.sha256(sources + repr((compiler, _COMPILE_FLAGS, _machine())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        objects = [_compile(compiler, source, Path(scratch, source.with_suffix(".o").name)) for source in _SOURCES]
        shared = Path(scratch, "kernels.so")
        # Linked in a separate step without fast-math flags: the compiler driver would otherwise add
        # start-up code that flushes denormals for the whole process.
        linked = subprocess.run(
            [compiler, "-shared", *map(str, objects), "-o", str(shared), "-lm"], check=False, capture_output=True,
            text=True, timeout=120,
        )
        if linked.returncode != 0:
            raise subprocess.SubprocessError(linked.stderr.strip() or f"{compiler} failed to link")
        os.replace(shared, target)
    return target


def _compile(compiler: str, source: Path, obj: Path) -> Path:
    for arch in (["-march=native"], []):
        compiled = subprocess.run(
            [compiler, *_COMPILE_FLAGS, *arch, "-c", str(source), "-o", str(obj)],
            check=False, capture_output=True, text=True, timeout=120,
        )
        if compiled.returncode == 0:
            return obj
    raise subprocess.SubprocessError(compiled.stderr.strip() or f"{compiler} failed on {source.name}")


def _cache_dir() -> Path:
    root = os.environ.get("TORCHBAYESIAN_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(root) / "torchbayesian" if root else Path.home() / ".cache" / "torchbayesian"


def _machine() -> str:
    """Identify the CPU, so a cache shared between different machines keeps one build per CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, seed, flag, number = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_float
    library.tb_rademacher.argtypes = [pointer, size, seed, size]
    library.tb_local_reparameterization.argtypes = [pointer, pointer, pointer, pointer, size, seed, size]
    library.tb_gaussian_forward.argtypes = [
        pointer, pointer, pointer, pointer, size, flag, seed, size, number, pointer,
    ]
    library.tb_gaussian_backward.argtypes = [
        pointer, pointer, pointer, pointer, pointer, pointer, pointer, size, flag, number, number, number,
    ]
    for function in (library.tb_rademacher, library.tb_local_reparameterization,
                     library.tb_gaussian_forward, library.tb_gaussian_backward):
        function.restype = None
    library.tb_conv2d_single_channel_weight_grad.argtypes = [pointer, pointer, pointer] + [size] * 11
    library.tb_conv2d_single_channel_weight_grad.restype = ctypes.c_int
    return library
