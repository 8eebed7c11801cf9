"""Monte Carlo prediction: many weight samples in one call, vectorised with `torch.func.vmap` when possible."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from torchbayesian import _sampling
from torchbayesian._validation import positive_int
from torchbayesian.module import BayesianModule
from torchbayesian.registration import posteriors

__all__ = ["predict"]

_logger = logging.getLogger(__name__)


def predict(
    model: nn.Module,
    *args: Any,
    num_samples: int,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``model(*args, **kwargs)`` with ``num_samples`` independent weight samples and stack the outputs.

    Each draw samples every posterior afresh (tied tensors share one sample within a draw), so
    the result holds ``num_samples`` draws from the predictive distribution. Tensors in the
    output gain a leading dimension of size ``num_samples``; tuples, lists, dicts and HuggingFace
    ``ModelOutput`` are stacked field by field.

    By default the draws are **batched** with ``torch.func.vmap(..., randomness="different")``: the
    model runs once on weights with an extra sample dimension, which is much faster than
    ``num_samples`` Python-level forwards for small and medium models. Models vmap cannot trace
    (in-place updates of buffers such as BatchNorm running statistics in training mode,
    data-dependent control flow, some custom ops) fall back to a loop of forwards: buffers changed
    by the failed attempt are restored first, and the failure is logged at DEBUG level. A
    `BayesianModule` remembers, per mode (training or evaluation), whether vmap worked, so later
    calls go straight to the path that works; other modules try vmap at every call. Both paths give identically
    distributed outputs. Frozen posteriors (`torchbayesian.bnn.frozen`) return their mean in
    every draw. Gradients flow as usual; wrap the call in ``torch.no_grad()`` for inference. The
    posteriors' `last_sample` is left as it was before the call.

    Hugging Face models (a ``config`` with ``use_cache``, e.g. causal language models) are run with
    ``use_cache=False`` unless ``use_cache`` is passed: a key-value cache belongs to one weight
    sample and is of no use to the next. Non-tensor outputs that differ between draws (a cache
    when ``use_cache=True``) come back as ``None``. For a causal LM, ``logits`` of shape
    ``[S, batch, tokens, vocab]`` give the token-level predictive entropy and mutual information
    with ``bnn.entropy(logits, from_logits=True)`` and ``bnn.epistemic_uncertainty(logits, from_logits=True)``.

    Args:
        model (nn.Module): A `BayesianModule`, or any module holding posteriors.
        *args: Positional inputs of the model.
        num_samples (int): Number of Monte Carlo draws ``S``.
        vectorize (bool | None): ``None`` tries vmap and falls back to the loop; ``True`` uses vmap
            and raises if it fails; ``False`` always loops.
        chunk_size (int | None): Draws computed per vmap call, to bound memory (``None``: all at
            once). On CPU, convolutional models run faster with ``chunk_size=8``: a batch of
            sampled kernels becomes a grouped convolution, which is slow there (see ``benchmarks/``).
        **kwargs: Keyword inputs of the model.

    Returns:
        The model's output with every tensor stacked to shape ``[num_samples, ...]``.

    Raises:
        ValueError: If ``num_samples`` or ``chunk_size`` is not a positive integer, or if
            ``vectorize=True`` and the model cannot be vmapped.
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> model = bnn.BayesianModule(torch.nn.Linear(4, 3))
        >>> with torch.no_grad():
        ...     logits = bnn.predict(model, torch.randn(10, 4), num_samples=16)
        >>> logits.shape
        torch.Size([16, 10, 3])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"predict: model must be an nn.Module, got {type(model).__name__}.")
    positive_int("predict", "num_samples", num_samples)
    if chunk_size is not None:
        positive_int("predict", "chunk_size", chunk_size)
    if "use_cache" not in kwargs and getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False
    vmap_works = _vmap_memo(model)
    if vectorize is None:
        vectorize = vmap_works.get(model.training, True)
        strict = False
    else:
        strict = vectorize
    with _keep_last_samples(model):
        if vectorize:
            known = vmap_works.get(model.training, False)
            buffers = {} if known else {name: b.clone() for name, b in model.named_buffers()}
            try:
                output = _vectorized(model, args, kwargs, num_samples, chunk_size)
            except Exception as error:
                _restore_buffers(model, buffers)
                if strict:
                    raise ValueError(
                        f"predict: {type(model).__name__} cannot be vectorised with torch.func.vmap "
                        f"({type(error).__name__}: {error}); pass vectorize=None or False to loop instead."
                    ) from error
                vmap_works[model.training] = False
                _logger.debug("predict: vmap failed for %s, using a loop: %r", type(model).__name__, error)
            else:
                vmap_works[model.training] = True
                return output
        return _looped(model, args, kwargs, num_samples)


def _vmap_memo(model: nn.Module) -> dict[bool, bool]:
    """Whether vmap worked, by training mode: kept on a `BayesianModule`, fresh (empty) for other modules."""
    if not isinstance(model, BayesianModule):
        return {}
    memo = getattr(model, "_vmap_works_by_mode", None)
    if memo is None:  # a BayesianModule pickled before `BayesianModule.__init__` declared the memo
        memo = model._vmap_works_by_mode = {}
    return memo


def _vectorized(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], num_samples: int,
                chunk_size: int | None) -> Any:
    def one_draw(_: Tensor) -> Any:
        with _sampling.fresh_samples():
            return model(*args, **kwargs)

    index = torch.arange(num_samples, device=_device(model, args, kwargs))
    return torch.func.vmap(one_draw, randomness="different", chunk_size=chunk_size)(index)


def _looped(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], num_samples: int) -> Any:
    outputs = []
    for _ in range(num_samples):
        with _sampling.fresh_samples():
            outputs.append(model(*args, **kwargs))
    return _stack(outputs, type(model.module if isinstance(model, BayesianModule) else model).__name__)


def _stack(draws: list[Any], owner: str) -> Any:
    """Stack the draws' tensors along a new first dimension, container by container.

    Mappings (dicts, HuggingFace ``ModelOutput``), named tuples, tuples and lists are rebuilt with
    their own type; other values go through `_shared`.
    """
    first = draws[0]
    if isinstance(first, Tensor) and all(isinstance(draw, Tensor) for draw in draws):
        return torch.stack(draws)
    if any(type(draw) is not type(first) for draw in draws):
        raise _different_structure(owner)
    if isinstance(first, Mapping):
        if any(list(draw.keys()) != list(first.keys()) for draw in draws):
            raise _different_structure(owner)
        stacked = {key: _stack([draw[key] for draw in draws], owner) for key in first}
        # Keyword construction suits dataclass-like mappings (ModelOutput); other keys need the pairs.
        return type(first)(**stacked) if all(isinstance(key, str) for key in stacked) else type(first)(stacked)
    if isinstance(first, (tuple, list)):
        if any(len(draw) != len(first) for draw in draws):
            raise _different_structure(owner)
        items = [_stack(list(parts), owner) for parts in zip(*draws)]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    return _shared(draws)


def _different_structure(owner: str) -> ValueError:
    return ValueError(f"predict: {owner} returned outputs of different structure across draws.")


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors in ``value``, searching tuples, lists and mappings depth first."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _shared(leaves: list[Any]) -> Any:
    # A non-tensor output (a number, a string) is kept when every draw returns it; one that differs
    # between draws (a key-value cache) belongs to no single prediction and is dropped.
    try:
        return leaves[0] if all(leaf is leaves[0] or leaf == leaves[0] for leaf in leaves) else None
    except (RuntimeError, TypeError, ValueError):
        return None


@contextmanager
def _keep_last_samples(model: nn.Module) -> Iterator[None]:
    # Samples drawn under vmap are batched wrappers that must not outlive it.
    saved = [(posterior, posterior._last_sample) for _, posterior in posteriors(model)]
    try:
        yield
    finally:
        for posterior, sample in saved:
            posterior._last_sample = sample


def _restore_buffers(model: nn.Module, buffers: dict[str, Tensor]) -> None:
    # A failed vmap may have updated some buffers in place (BatchNorm's num_batches_tracked) before failing.
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            saved = buffers.get(name)
            if saved is not None and saved.shape == buffer.shape:
                buffer.copy_(saved)


def _device(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device:
    tensor = next(_tensors((args, kwargs)), None)
    if tensor is not None:
        return tensor.device
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")
