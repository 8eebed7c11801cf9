"""The optional C kernels, built with the package (``setup.py``) and loaded once, at import.

The kernels replace chains of element-wise torch operations on float32 CPU tensors (the weight
sample, the softplus, the closed-form KL and their gradients) with one pass each, and draw their
standard normals from a vectorised counter-based generator keyed by a seed taken from torch's
generator. Callers never use them directly: they are the CPU implementations of the operators in
`torchbayesian._native.ops`, which run torch operations on every other device and dtype. With
``TORCHBAYESIAN_NATIVE=0`` in the environment, or when the package was installed without a C
compiler, the operators run their torch implementation everywhere and one log line says so.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os

from torch import Tensor

__all__ = ["KERNELS", "address", "unavailable_reason"]

_logger = logging.getLogger("torchbayesian")


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("TORCHBAYESIAN_NATIVE", "1") == "0":
        return None, "TORCHBAYESIAN_NATIVE=0 in the environment"
    spec = importlib.util.find_spec("torchbayesian._native._kernels")
    if spec is None or spec.origin is None:
        return None, "the package was installed without them (no C compiler at install time)"
    try:
        return _declare(ctypes.CDLL(spec.origin)), None
    except (OSError, AttributeError) as error:
        return None, f"they could not be loaded: {error}"


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, size, seed, flag, number = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int, ctypes.c_float
    library.tb_rademacher.argtypes = [pointer, size, seed, size]
    threads = ctypes.c_int
    library.tb_local_reparameterization.argtypes = [pointer, pointer, pointer, pointer, size, seed, threads]
    library.tb_gaussian_forward.argtypes = [pointer, pointer, pointer, size, flag, seed, number, pointer, threads]
    library.tb_gaussian_backward.argtypes = [
        pointer, pointer, pointer, pointer, pointer, pointer, pointer, size, flag, number, number, number, threads,
    ]
    for function in (library.tb_rademacher, library.tb_local_reparameterization,
                     library.tb_gaussian_forward, library.tb_gaussian_backward):
        function.restype = None
    library.tb_conv2d_single_channel_weight_grad.argtypes = [pointer, pointer, pointer] + [size] * 11
    library.tb_conv2d_single_channel_weight_grad.restype = ctypes.c_int
    return library


KERNELS, _REASON = _load()
"""The loaded kernels, or ``None`` when unavailable (fixed at import, so every thread sees the same)."""

if _REASON is not None:
    _logger.info("torchbayesian: C kernels unavailable (%s); using the torch implementation.", _REASON)


def unavailable_reason() -> str | None:
    """Why the C kernels are not used, or ``None`` when they are."""
    return _REASON


def address(tensor: Tensor | None, offset: int = 0) -> int | None:
    """Address of element ``offset`` of a contiguous ``tensor``; ``None`` for ``None``."""
    return None if tensor is None else tensor.data_ptr() + offset * tensor.element_size()
