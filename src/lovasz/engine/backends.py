"""Backend resolver: which implementation evaluates the loss, decided once per call, before it runs.

The backends are declared in :mod:`.registry`: ``"torch"`` (:mod:`.binned` and :mod:`.exact`, any device,
traceable by ``torch.compile``), ``"native"`` (:mod:`.kernels_native`, fused CPU kernels in C, compiled
when the package is installed) and ``"triton"`` (:mod:`.kernels_triton`, fused CUDA kernels).  The exact
engine (``bins=None``) is PyTorch everywhere.

**Order.**  The first of these that applies decides:

1. the ``backend=`` argument of the loss, when it is not ``"auto"``;
2. the environment variable ``LOVASZ_BACKEND`` (:mod:`.config`), when it is set and not ``"auto"``;
3. the automatic choice: the first backend of :data:`.registry.AUTO_ORDER` (triton, native, torch) whose
   :meth:`.registry.Backend.not_supported_reasons` is empty for this call (and, for Triton, whose probe
   passed on the input's device, :mod:`.probe`).  Triton serves CUDA tensors, and CPU tensors too when
   ``TRITON_INTERPRET=1`` (Triton's interpreter, for testing kernels without a GPU).

A backend asked for in 1 or 2 that cannot serve the call raises :class:`BackendNotSupportedError`,
which lists every reason.  With ``bins=None`` the argument must be ``"auto"`` or ``"torch"`` and
``LOVASZ_BACKEND`` is not read.

**Fallbacks, announced once.**  Where the automatic choice skips a backend that would have served the
call (the C library not built or not loaded, so a CPU call runs on the PyTorch engine; the Triton kernels
failing their probe on a device) it says so once with a :class:`LovaszFallbackWarning` that gives the
reason and the fix.  Errors of a real call are never caught.

**The engine.**  ``bins="auto"`` (the losses' default) is resolved first, by :func:`auto_bins`: the
exact engine for float64 input (precision asked for) and for groups smaller than the binned backend's
``auto_exact_below`` (where a sort costs less than a table of bins), the binned engine with
:data:`~lovasz.engine.histogram.DEFAULT_BINS` otherwise.

The outcome is a :class:`Decision`, which the loss hands to its input checks (the native kernels check
the values themselves: :attr:`Decision.checks_inputs`) and to the engine (:func:`lovasz.engine.group_losses`).
:func:`explain` shows the decision for a call without running it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .. import surrogates
from .._checks import check_backend, check_bins
from ..types import BACKENDS
from . import config
from .probe import triton_probe, triton_works
from .registry import (
    AUTO_ORDER,
    REGISTRY,
    Backend,
    BackendNotSupportedError,
    LovaszFallbackWarning,
    _constant_under_compile,
    spec,
)

__all__ = [
    "AUTO_ORDER",
    "ENV_VAR",
    "BackendNotSupportedError",
    "Decision",
    "Explanation",
    "LovaszFallbackWarning",
    "explain",
    "resolve",
    "triton_probe",
]

ENV_VAR = "LOVASZ_BACKEND"
Source = Literal["argument", "environment", "automatic"]

# Frames between the warning call and the loss's caller: _announce, _usable_or_warn, resolve, decide,
# the loss function (lovasz_softmax, or _binary_loss below lovasz_hinge/lovasz_sigmoid).
_STACKLEVEL = 6


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`resolve`: the engine and backend that will evaluate the call, and why."""

    engine: Literal["exact", "binned"]
    backend: Backend
    source: Source
    """Where the choice came from: the ``backend=`` argument, ``LOVASZ_BACKEND``, or the automatic order."""

    @property
    def name(self) -> str:
        """The backend's name."""
        return self.backend.name

    @property
    def fused(self) -> bool:
        """Whether fused kernels run (rather than the PyTorch engine)."""
        return self.backend.fused

    @property
    def checks_inputs(self) -> bool:
        """Whether the kernels that will run check the scores (NaN/Inf) and labels themselves, with the
        loss's messages, so the loss's own value checks can skip those passes."""
        return self.backend.capabilities.checks_inputs


_ANNOUNCED: set[str] = set()


def _announce(name: str, reasons: list[str]) -> None:
    if name in _ANNOUNCED:
        return
    _ANNOUNCED.add(name)
    warnings.warn(
        f"lovasz: the {name} kernels cannot run in this process ({'; '.join(reasons)}); the binned engine "
        "uses the PyTorch implementation (backend='torch') for the calls they would have served. "
        "Install a C compiler (gcc or clang) and reinstall lovasz to build them, or pass backend='torch' "
        "to silence this warning.",
        LovaszFallbackWarning,
        stacklevel=_STACKLEVEL,
    )


@_constant_under_compile
def _usable_or_warn(name: str) -> bool:
    """Whether backend ``name`` can run in this process at all; where it cannot, say so once per process
    (while tracing under ``torch.compile``: formatting the warning breaks a graph)."""
    missing = REGISTRY[name].missing()
    if missing:
        _announce(name, missing)
    return not missing


@_constant_under_compile
def _triton_works_or_warn(device: str) -> bool:
    """:func:`.probe.triton_works` for the automatic choice, which skips Triton after a failed probe and
    says so once per device."""
    import torch

    works = triton_works(device)
    if not works:
        triton_probe.warn_once(torch.device(device), stacklevel=_STACKLEVEL)
    return works


def _requested(backend: str) -> tuple[str, Source, str]:
    """The backend asked for, where the request came from and how to name it in a message."""
    check_backend(backend)
    if backend != "auto":
        return backend, "argument", f"backend={backend!r}"
    env = config.settings().backend
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
    return env, "environment" if env != "auto" else "automatic", f"{ENV_VAR}={env}"


def _group_size(x: Tensor, per_image: object, channels: int | None) -> int:
    """Elements per group of a loss on ``x`` (one class of one image, or of the batch)."""
    c = (x.shape[1] if x.dim() >= 2 else 1) if channels is None else channels
    return x.numel() // max(1, c * (x.shape[0] if per_image is True else 1))


def auto_bins(
    bins: object,
    x: object,
    *,
    per_image: object,
    channels: int | None = None,
    distributed: bool = False,
    backend: str = "auto",
    surrogate: str | surrogates.Surrogate | None = None,
) -> object:
    """What ``bins`` means for a call on ``x``: ``"auto"`` becomes ``None`` (the exact engine) for float64
    input, and for groups of fewer elements than the ``auto_exact_below`` of the backend that would run
    the binned engine (:mod:`.registry`: 1024 for the native kernels, 16384 for the PyTorch engine, whose
    table costs more); else ``DEFAULT_BINS``.  A backend asked for (``backend=`` or ``LOVASZ_BACKEND``)
    gets the binned engine it implements.  Any other ``bins`` is returned as it is (the loss's checks
    judge it).  ``channels``: the groups per image (the classes; by default ``x.shape[1]``).  With a process
    group (``distributed``) the choice does not depend on the local batch, which differs between ranks:
    binned unless float64 (the exact engine would gather every rank's errors)."""
    return _auto(bins, x, per_image, channels, distributed, backend, surrogate)[0]


def _auto(bins, x, per_image, channels, distributed, backend, surrogate, ragged=False) -> tuple[object, tuple]:
    """:func:`auto_bins`, and why (a tuple that :func:`explain` puts in words).  It reads only what the
    threshold needs: a group below every backend's ``auto_exact_below`` takes the exact engine, one at or
    above all of them the binned engine, without looking at what is built; in between, the backend that
    the automatic choice would take for the binned engine decides (quietly: the call's own decision
    announces any fallback)."""
    if not (isinstance(bins, str) and bins == "auto"):
        return bins, ("given",)
    from .histogram import DEFAULT_BINS

    if not isinstance(x, Tensor) or x.dim() < 1 or x.numel() == 0:
        return DEFAULT_BINS, ("refused",)  # the loss's checks refuse such an input
    if x.dtype == torch.float64:
        return None, ("float64",)
    if distributed:
        return DEFAULT_BINS, ("distributed",)
    try:
        if _requested(backend)[0] != "auto":
            return DEFAULT_BINS, ("asked",)
    except (ValueError, TypeError):  # the call's checks report it
        return DEFAULT_BINS, ("refused",)
    group = _group_size(x, per_image, channels)
    thresholds = [spec.auto_exact_below for spec in REGISTRY.values()]
    if group < min(thresholds):
        return None, ("group", group, min(thresholds), None)
    if group >= max(thresholds):
        return DEFAULT_BINS, ("group", group, max(thresholds), None)
    binned = _first_binned_backend(x, surrogate, ragged)
    bins = None if group < binned.auto_exact_below else DEFAULT_BINS
    return bins, ("group", group, binned.auto_exact_below, binned.name)


def _first_binned_backend(x: Tensor, surrogate, ragged: bool = False) -> Backend:
    """The backend the automatic choice would take for a binned call on ``x``, without announcing
    fallbacks (:func:`resolve` does that for the call's own decision)."""
    for name in AUTO_ORDER:
        candidate = REGISTRY[name]
        if candidate.not_supported_reasons(x, 256, surrogate, ragged):
            continue
        if name == "triton" and not triton_works(str(x.device)):
            continue
        return candidate
    return REGISTRY["torch"]


def resolve(
    backend: str,
    x: Tensor,
    bins: int | None,
    surrogate: str | surrogates.Surrogate | None = None,
    ragged: bool = False,
) -> Decision:
    """Choose the engine and backend for a loss on ``x`` (see the module docstring for the order);
    ``ragged``: per-sample groups of a ``batch=`` vector, which only backends with the ``ragged_groups``
    capability serve."""
    if bins is None:
        check_backend(backend)
        if backend not in ("auto", "torch"):
            raise BackendNotSupportedError(
                f"backend={backend!r} cannot run this call: the {backend} kernels implement the binned engine "
                "only; pass bins=lovasz.DEFAULT_BINS, or backend='auto' for the exact engine"
            )
        return Decision("exact", REGISTRY["torch"], "argument" if backend == "torch" else "automatic")
    name, source, named = _requested(backend)
    if name != "auto":
        chosen = spec(name)
        reasons = chosen.not_supported_reasons(x, bins, surrogate, ragged)
        if reasons:
            raise BackendNotSupportedError(f"{named} cannot run this call: " + "; ".join(reasons))
        if name == "triton" and not triton_works(str(x.device)):
            exc = triton_probe.failure(x.device)
            raise BackendNotSupportedError(
                f"{named} cannot run this call: the Triton kernels failed to compile or launch on {x.device} ({exc!r})"
            ) from exc
        return Decision("binned", chosen, source)
    for candidate in AUTO_ORDER:
        chosen = REGISTRY[candidate]
        if not chosen.fused:
            return Decision("binned", chosen, "automatic")
        missing = chosen.missing()
        reasons = chosen.not_supported_reasons(x, bins, surrogate, ragged)
        if len(reasons) > len(missing):  # it could not serve this call even where it runs
            continue
        if missing:
            if candidate == "native":  # a CPU call that the C kernels would have served
                _usable_or_warn(candidate)
            continue
        if candidate == "triton" and not _triton_works_or_warn(str(x.device)):
            continue
        return Decision("binned", chosen, "automatic")
    raise AssertionError("AUTO_ORDER ends with a backend that serves every call")  # pragma: no cover


def decide(
    backend: str,
    x: Tensor,
    bins: object,
    surrogate: surrogates.Surrogate,
    *,
    per_image: object = False,
    channels: int | None = None,
    distributed: bool = False,
    ragged: bool = False,
) -> tuple[Decision | None, object, Exception | None]:
    """:func:`resolve` for a loss, which checks its arguments first, with ``bins="auto"`` resolved
    (:func:`auto_bins`): the decision, the bins the call runs with, and the error that resolving raised
    (the loss raises it after its own checks, which report bad arguments first).  For an ``x`` that is no
    tensor there is no decision and no error: the loss's checks name it.  ``ragged``: per-sample groups
    of a ``batch=`` vector; ``bins="auto"`` then sizes the groups as all the points (the samples' sizes
    are not read before the choice)."""
    bins = _auto(bins, x, per_image and not ragged, channels, distributed, backend, surrogate, ragged)[0]
    if not isinstance(x, Tensor):
        return None, bins, None
    try:
        return resolve(backend, x, bins, surrogate, ragged), bins, None  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        return None, bins, exc


@dataclass(frozen=True)
class Explanation:
    """Which engine and backend a loss call would use, where that choice came from, and why each other
    backend could not serve it (:func:`explain`)."""

    engine: Literal["exact", "binned"]
    backend: str
    source: Source
    rejected: dict[str, list[str]]
    """Each other backend's reasons (:meth:`.registry.Backend.not_supported_reasons`, and a failed Triton
    probe; empty where it could serve the call but comes later in the order, or was not asked for)."""
    bins: int | None = None
    """The bins the call runs with (``None``: the exact engine)."""
    engine_reason: str = ""
    """Why that engine: what ``bins`` was and, for ``"auto"``, what decided it."""

    def __str__(self) -> str:
        lines = [f"{self.engine} engine, backend {self.backend!r} ({self.source} choice)"]
        if self.engine_reason:
            lines.append(f"  engine: {self.engine_reason}")
        for name, reasons in self.rejected.items():
            why = "; ".join(reasons) if reasons else "could serve the call, not chosen"
            lines.append(f"  {name}: {why}")
        return "\n".join(lines)


_LOSS_OPTIONS = frozenset({"classes", "ignore_index", "weight", "reduction"})  # they do not change the choice


def explain(
    input: Tensor,
    target: Tensor | None = None,
    *,
    loss: Literal["softmax", "hinge", "sigmoid"] = "softmax",
    from_logits: bool = True,
    bins: int | str | None = "auto",
    backend: str = "auto",
    per_image: bool | None = None,
    process_group: object | None = None,
    batch: Tensor | None = None,
    **options: object,
) -> Explanation:
    """Which engine and backend ``lovasz_<loss>(input, ..., bins=bins, backend=backend)`` would use, without
    running it.

    The choice depends on the input's device and dtype, ``bins``, ``backend``, ``LOVASZ_BACKEND`` and
    what is built or installed; the target, the reduction and the class selection do not change it.  A
    request that cannot be served raises :class:`BackendNotSupportedError`, as the loss would.  Triton's
    verdict may run its probe (once per device), as the loss's first call would.

    Args:
        input: the scores the loss would get (their device, dtype and shape matter).
        target: the loss's target; accepted so that ``explain`` takes the loss's arguments, not read.
        loss: ``"softmax"``, ``"hinge"`` or ``"sigmoid"``.
        from_logits: whether ``input`` holds logits (as the loss's argument).
        bins: as the loss's ``bins=``: ``"auto"``, ``None`` (the exact engine) or the binned engine's bins.
        backend: as the loss's ``backend=``.
        per_image: as the loss's ``per_image=`` (``None``: the loss's default), which sets the size of
            the groups that ``bins="auto"`` looks at.
        process_group: as the loss's: with one, ``bins="auto"`` does not look at the local batch.
        batch: as the loss's: with ``per_image``, the per-sample groups of a ragged batch, which only
            some backends serve (only whether it is given is read).
        options: the loss's other keyword arguments (``classes``, ``ignore_index``, ``weight``,
            ``reduction``), accepted and not read: they do not change the choice.

    Returns:
        An :class:`Explanation`; ``str()`` of it reads as a short report.

    Example:
        >>> import torch, lovasz
        >>> x = torch.randn(2, 3, 8, 8)
        >>> lovasz.explain(x).engine  # bins="auto": 128 elements per class is a small group
        'exact'
        >>> lovasz.explain(torch.randn(8, 3, 64, 64)).engine
        'binned'
        >>> print(lovasz.explain(x, bins=256, backend="torch"))  # doctest: +ELLIPSIS
        binned engine, backend 'torch' (argument choice)
        ...
        >>> lovasz.explain(x.double(), bins=256).backend  # the fused kernels compute in float32
        'torch'
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    unknown = sorted(set(options) - _LOSS_OPTIONS)
    if unknown:
        raise TypeError(f"explain() got unexpected keyword arguments {unknown}; it takes the loss's arguments")
    s = surrogates.for_loss(loss, from_logits)
    check_backend(backend)
    if per_image is None:
        per_image = loss == "hinge"
    ragged = batch is not None and per_image is True
    flat = batch is not None and input.dim() == 2
    channels = None if loss == "softmax" else (input.shape[1] if input.dim() >= 4 or flat else 1)
    bins, why = _auto(bins, input, per_image and not ragged, channels, process_group is not None, backend, s, ragged)
    bins = check_bins(bins)
    decision = resolve(backend, input, bins, s, ragged)
    reason = _engine_reason(bins, why)
    rejected = {
        name: other.not_supported_reasons(input, bins, s, ragged)
        for name, other in REGISTRY.items()
        if name != decision.name
    }
    failure = triton_probe.known_failure(input.device)
    if "triton" in rejected and not rejected["triton"] and failure is not None:
        rejected["triton"] = [f"the Triton kernels failed to compile or launch on {input.device} ({failure!r})"]
    return Explanation(decision.engine, decision.name, decision.source, rejected, bins, reason)


def _engine_reason(bins: int | None, why: tuple) -> str:
    """:func:`_auto`'s reason for the engine, in words."""
    kind = why[0]
    if kind in ("given", "refused"):
        return "bins=None: the exact engine" if bins is None else f"bins={bins}: the binned engine"
    if kind == "float64":
        return "bins='auto': float64 input takes the exact engine"
    if kind == "distributed":
        return f"bins='auto' with a process group: the binned engine ({bins} bins), whatever the local batch"
    if kind == "asked":
        return f"bins='auto' with a backend asked for: its binned engine ({bins} bins)"
    _, group, threshold, name = why
    where = f"the {name} binned engine's threshold" if name else "every backend's threshold"
    if bins is None:
        return f"bins='auto': {group} elements per group, fewer than {threshold} ({where}): the exact engine"
    return f"bins='auto': {group} elements per group, at least {threshold} ({where}): the binned engine ({bins} bins)"
