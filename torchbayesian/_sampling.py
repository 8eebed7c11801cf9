"""Sampling scopes: one weight sample per posterior within a block of code, held per thread and task."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

__all__ = ["KLRecord", "Record", "Scope", "close_scope", "fresh_samples", "open_scope", "replay_samples", "reuse_samples"]


@dataclass(eq=False)
class KLRecord:
    """A KL divergence computed for one posterior, valid while the tensors it read keep their versions.

    Attributes:
        value (Tensor): The summed KL divergence.
        posterior (weakref.ref): The posterior it belongs to.
        prior (nn.Module): The prior it was computed against.
        versions (tuple[tuple[Tensor, int], ...]): The tensors the KL was computed from, with their
            version counters then (any in-place update, such as an optimiser step, bumps them).
        with_grad (bool): Whether ``value`` was computed with gradient tracking.
        spent (bool): Set once backward has run through ``value``, whose graph is then freed.
    """

    value: Tensor
    posterior: weakref.ref[nn.Module]
    prior: nn.Module
    versions: tuple[tuple[Tensor, int], ...]
    with_grad: bool
    spent: bool = False

    @classmethod
    def create(
        cls, value: Tensor, posterior: nn.Module, prior: nn.Module, inputs: tuple[Tensor, ...]
    ) -> KLRecord:
        """Record ``value``, computed from ``inputs``, marking it spent as soon as backward runs through it."""
        record = cls(value, weakref.ref(posterior), prior, _versions(inputs), torch.is_grad_enabled())
        if value.grad_fn is not None:
            spent = weakref.ref(record)
            value.grad_fn.register_prehook(lambda grads: _mark_spent(spent))
        return record

    def valid_for(self, posterior: nn.Module, prior: nn.Module, inputs: tuple[Tensor, ...]) -> bool:
        """Whether the record holds ``posterior``'s KL to ``prior`` for these very ``inputs``, unchanged, in this grad mode."""
        versions = _versions(inputs)
        return (
            not self.spent
            and self.posterior() is posterior
            and self.prior is prior
            and (self.with_grad or not torch.is_grad_enabled())
            and len(self.versions) == len(versions)
            and all(a is b and u == v for (a, u), (b, v) in zip(self.versions, versions))
        )


def _versions(tensors: tuple[Tensor, ...]) -> tuple[tuple[Tensor, int], ...]:
    return tuple((tensor, tensor._version) for tensor in tensors)


def _mark_spent(record: weakref.ref[KLRecord]) -> None:
    found = record()
    if found is not None:
        found.spent = True


@dataclass(eq=False)
class Record:
    """What one posterior has drawn in a scope, in one grad mode; ``None`` where not drawn yet.

    Attributes:
        posterior (nn.Module): The posterior (kept so that its id stays valid while the scope lives).
        sample (Tensor | None): The weight sample every read of the tensor returns.
        perturbation (Tensor | None): ``sigma * eps``, for an estimator posterior.
        variance (Tensor | None): ``sigma ** 2``, for an estimator posterior.
        sigma (Tensor | None): The posterior's standard deviation, where it derives one.
        kl (KLRecord | None): The KL divergence to the prior, when the draw computed it.
        reads_mean (bool): Set while the posterior's layer runs its own forward for an estimator
            (Flipout, local reparameterization): reads of the tensor then return the mean.
    """

    posterior: nn.Module
    sample: Tensor | None = None
    perturbation: Tensor | None = None
    variance: Tensor | None = None
    sigma: Tensor | None = None
    kl: KLRecord | None = None
    reads_mean: bool = False


@dataclass(eq=False)
class Scope:
    """The draws of every posterior read inside one `reuse_samples` block.

    Records are kept apart by grad mode, so a draw made under ``torch.no_grad()`` is never handed to
    code that needs gradients. ``owner`` is the object that opened the scope with `open_scope`, if
    any; ``sampled_layers`` holds the ids of the estimator layers that read plain weight samples
    in this scope (`torchbayesian.estimators.sampled_weights`).
    """

    records: dict[tuple[int, bool], Record] = field(default_factory=dict)
    owner: object | None = None
    sampled_layers: set[int] = field(default_factory=set)

    def record(self, posterior: nn.Module) -> Record:
        """Return ``posterior``'s record for the current grad mode, creating an empty one."""
        key = id(posterior), torch.is_grad_enabled()
        found = self.records.get(key)
        if found is None:
            found = self.records[key] = Record(posterior)
        return found

    def snapshot(self) -> Scope:
        """Return a copy of the scope as it stands: later draws in either do not show in the other."""
        return Scope({key: replace(record) for key, record in self.records.items()},
                     sampled_layers=set(self.sampled_layers))

    def kl_records(self) -> dict[int, KLRecord]:
        """The KL divergences recorded in this scope, by posterior id (those computed with gradient first)."""
        found: dict[int, KLRecord] = {}
        for record in sorted(self.records.values(), key=lambda record: record.kl is None or not record.kl.with_grad):
            if record.kl is not None:
                found.setdefault(id(record.posterior), record.kl)
        return found


_active: ContextVar[Scope | None] = ContextVar("torchbayesian_scope", default=None)
# torch.compile cannot trace a ContextVar; while it traces, scopes opened in the traced code live here.
_traced = threading.local()
_latest_kls: ContextVar[dict[int, KLRecord] | None] = ContextVar("torchbayesian_latest_kls", default=None)


def active() -> Scope | None:
    """The innermost open scope of this thread or task, or ``None``."""
    if torch.compiler.is_compiling():
        return getattr(_traced, "scope", None)
    return _active.get()


@contextmanager
def reuse_samples() -> Iterator[None]:
    """Draw each posterior's sample at most once inside the block.

    Every access to a Bayesian tensor inside the block returns the same sample, so a weight used
    twice (a recurrent cell, tied embeddings) sees one draw. `BayesianModule` enters this context
    around every forward pass; use it yourself when calling a module on which you registered
    posteriors with `register_posterior`. Blocks may be nested: an inner block shares the outer
    block's samples, which are dropped when the outermost block exits.

    The scope belongs to the thread (and ``asyncio`` task) that opened it: other threads never see
    its samples. Quantities derived from the variational parameters that the sample and the KL
    divergence share (the standard deviation, the KL itself) are computed once per block.

    Example:
        >>> import torch
        >>> from torchbayesian import bnn
        >>> layer = torch.nn.Linear(3, 3)
        >>> _ = bnn.register_posterior(layer, "weight")
        >>> with bnn.reuse_samples():
        ...     assert torch.equal(layer.weight, layer.weight)
    """
    if active() is not None:
        yield
        return
    scope = Scope()
    with _opened(scope):
        yield
    if torch.compiler.is_compiling():
        return
    # The KLs the block computed stay available to `kl_divergence` after it (the natural
    # ``loss = criterion(model(x), y) + model.kl_divergence() / n``), while still valid.
    _latest_kls.set(scope.kl_records())


@contextmanager
def fresh_samples() -> Iterator[None]:
    """Draw new samples inside the block, even within an enclosing `reuse_samples` block.

    The block is its own sampling scope; the enclosing block's samples are used again on exit,
    and nothing it computed outlives it.
    """
    with _opened(Scope()):
        yield


def replay_samples() -> tuple[AbstractContextManager[None], AbstractContextManager[None]]:
    """Recompute a checkpointed region in the sampling scope it first ran in: a ``context_fn`` for checkpointing.

    Pass it as ``context_fn`` to ``torch.utils.checkpoint.checkpoint`` (``use_reentrant=False``).
    The recomputation then sees the samples drawn before the region, as they stood when it began,
    and draws again, from the generator state that checkpointing restores, those the region drew:
    the same samples and noise, and the same saved tensors, as the forward pass. Without it the
    recomputation runs outside any scope (the forward's scope has closed by the backward pass),
    which gives the same result only when the region reads each Bayesian tensor once and draws
    every sample it reads itself. `BayesianModule` passes it to Hugging Face's
    ``gradient_checkpointing_enable`` and ``activation_checkpointing_enable``.

    Returns:
        tuple: Two context managers: that of the forward pass, which notes the open scope, and that
        of the recomputation, which reopens it as noted.

    Example:
        >>> import torch
        >>> from torch.utils.checkpoint import checkpoint
        >>> from torchbayesian import bnn
        >>> layer = torch.nn.Linear(3, 3)
        >>> _ = bnn.register_posterior(layer, "weight")
        >>> x = torch.randn(2, 3)
        >>> with bnn.reuse_samples():  # the region reads a sample drawn before it
        ...     y = layer(x) + checkpoint(layer, x, use_reentrant=False, context_fn=bnn.replay_samples)
        >>> y.sum().backward()
    """
    entry: list[Scope | None] = []

    @contextmanager
    def forward() -> Iterator[None]:
        scope = active()
        entry[:] = [None if scope is None else scope.snapshot()]
        yield

    @contextmanager
    def recompute() -> Iterator[None]:
        noted = entry[0] if entry else None
        with _opened(None if noted is None else noted.snapshot()):
            yield

    return forward(), recompute()


def open_scope(owner: object) -> Scope:
    """Return the open scope, or open one owned by ``owner`` when none is open; `close_scope` closes it.

    For code that cannot wrap a block in `reuse_samples`: a forward pre-hook opens the scope and
    the matching forward hook closes it.
    """
    scope = active()
    if scope is None:
        scope = Scope(owner=owner)
        _set_active(scope)
    return scope


def close_scope(owner: object) -> None:
    """Close the open scope if ``owner`` opened it with `open_scope`; otherwise leave it open."""
    scope = active()
    if scope is not None and scope.owner is owner:
        _set_active(None)


def _set_active(scope: Scope | None) -> None:
    if torch.compiler.is_compiling():
        _traced.scope = scope
    else:
        _active.set(scope)


@contextmanager
def _opened(scope: Scope | None) -> Iterator[None]:
    outer = active()
    _set_active(scope)
    try:
        yield
    finally:
        _set_active(outer)


def find_kl(posterior: nn.Module) -> KLRecord | None:
    """The KL recorded for ``posterior`` by the open scope, or else by the latest closed one of this thread."""
    scope = active()
    if scope is not None:
        for grad in (True, False):
            record = scope.records.get((id(posterior), grad))
            if record is not None and record.kl is not None:
                return record.kl
    latest = _latest_kls.get()
    return None if latest is None else latest.get(id(posterior))
