"""Backend resolver: which implementation evaluates the binned engine, decided before the call.

The binned engine has four implementations: ``"torch"`` (:mod:`.binned`, any device, traceable by
``torch.compile``), ``"native"`` (:mod:`.kernels_native`, fused CPU kernels in C, compiled when the
package is installed), ``"numba"`` (:mod:`.kernels_cpu`, the same CPU kernels compiled by numba on first
use, where the C library was not built) and ``"triton"`` (:mod:`.kernels_triton`, fused CUDA kernels).
The exact engine (``bins=None``) is PyTorch everywhere.

**Order.**  The first of these that applies decides:

1. the ``backend=`` argument of the loss, when it is not ``"auto"``;
2. the environment variable ``LOVASZ_BACKEND``, when it is set and not ``"auto"``;
3. the automatic choice: the first of ``AUTO_ORDER`` = triton, native, numba, torch whose
   :func:`not_supported_reasons` is empty for this call (and, for Triton, whose probe passed on the
   input's device).  Triton serves CUDA tensors, and CPU tensors too when ``TRITON_INTERPRET=1`` (Triton's
   interpreter, for testing kernels without a GPU).

A backend asked for in 1 or 2 that cannot serve the call raises :class:`BackendNotSupportedError`,
which lists every reason (native or numba for a CUDA tensor, a C library that was not built, Triton
without a GPU, float64 input, a package that is not installed).  The fused kernels are custom operators
(:mod:`.fused`), so they also serve calls inside ``torch.compile``.  With ``bins=None`` the argument must
be ``"auto"`` or ``"torch"`` and ``LOVASZ_BACKEND`` is not read.

**Triton probe.**  Whether the Triton kernels compile and launch is decided once per device, before their
first use, by :data:`triton_probe`: a tiny forward *and* backward of both kernel families (class and
channel layout).  Only errors of compilation or launch (exceptions raised by Triton itself, runtime errors
of the driver, a missing compiler toolchain) count as a failure; out-of-memory errors and plain bugs
propagate.  After a failure the automatic choice skips Triton on that device and says so once with a
:class:`LovaszFallbackWarning`; an explicit request raises.  The probe's results live in that object;
``triton_probe.reset()`` forgets them.  Errors of a real call are never caught.

**Seam.**  :func:`load_kernels` is the only place that imports a kernel module; tests replace it to
simulate kernels that fail.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

import torch
from torch import Tensor

from .._checks import check_backend
from ..surrogates import SIGMOID, SOFTMAX
from ..types import BACKENDS

__all__ = [
    "AUTO_ORDER",
    "ENV_VAR",
    "BackendNotSupportedError",
    "LovaszFallbackWarning",
    "Resolved",
    "TritonProbe",
    "load_kernels",
    "not_supported_reasons",
    "resolve",
    "triton_probe",
]

ENV_VAR = "LOVASZ_BACKEND"
AUTO_ORDER = ("triton", "native", "numba", "torch")


class LovaszFallbackWarning(RuntimeWarning):
    """The automatic choice skipped a backend that failed its probe (said once per device)."""


class BackendNotSupportedError(ValueError):
    """A backend was asked for (argument or ``LOVASZ_BACKEND``) that cannot serve the call."""


@dataclass(frozen=True)
class Resolved:
    """The outcome of :func:`resolve`: the backend's name."""

    name: str

    @property
    def fused(self) -> bool:
        """Whether the backend runs fused kernels (native, numba, Triton) rather than the PyTorch engine."""
        return self.name != "torch"


_INSTALLED: dict[str, bool] = {}

_Fn = TypeVar("_Fn", bound=Callable[..., bool])


def _constant_under_compile(fn: _Fn) -> _Fn:
    """Marks ``fn`` as ``torch.compiler.assume_constant_result`` does (the attribute it sets), without
    importing Dynamo when lovasz is imported.

    For the per-process look-ups (what is installed or built, the Triton probe's verdict per device), whose
    results do not change once known: ``torch.compile`` runs them while tracing and neither traces into
    them nor guards on the caches they fill.  Traced, the first compiled call guarded on a cache *before*
    filling it, and so compiled the whole graph (a user's whole training step) a second time on the second
    call (``tests/test_compile.py::test_first_compiled_calls_compile_once``).  After
    ``triton_probe.reset()``, graphs compiled earlier keep the verdict they were traced with
    (``torch._dynamo.reset()`` forgets them)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_constant_under_compile
def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (looked up once per process)."""
    if package not in _INSTALLED:
        _INSTALLED[package] = importlib.util.find_spec(package) is not None
    return _INSTALLED[package]


def numba_installed() -> bool:
    return installed("numba")


@_constant_under_compile
def native_built() -> bool:
    """Whether the C library of the native kernels was built and loads (looked up once per process)."""
    if "native" not in _INSTALLED:
        from . import kernels_native

        _INSTALLED["native"] = kernels_native.AVAILABLE
    return _INSTALLED["native"]


def load_kernels(name: str) -> ModuleType:
    """The fused kernel module of backend ``name`` (``"native"``, ``"numba"`` or ``"triton"``), imported on
    first use."""
    if name == "native":
        from . import kernels_native as module

        if not module.AVAILABLE:
            raise ImportError("the native CPU kernels were not built (no C compiler when lovasz was installed)")
    elif name == "numba":
        from . import kernels_cpu as module
    elif name == "triton":
        from . import kernels_triton as module
    else:
        raise ValueError(f"backend {name!r} has no fused kernels")
    if not module.AVAILABLE:
        raise ImportError(f"the {name} package could not be imported")
    return module


def _triton_interpreted(x: Tensor) -> bool:
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def not_supported_reasons(name: str, x: Tensor, bins: int | None) -> list[str]:
    """Why backend ``name`` cannot evaluate the loss of ``x`` with ``bins`` (empty if it can).

    The Triton probe is not part of these reasons; :func:`resolve` consults it afterwards.
    """
    if name == "torch":
        return []
    reasons = []
    if bins is None:
        reasons.append(f"the {name} kernels implement the binned engine only (bins=None is the exact engine)")
    if x.dtype == torch.float64:
        reasons.append("the input is float64 and the fused kernels compute in float32 (backend='torch' keeps float64)")
    if name == "native":
        if x.device.type != "cpu":
            reasons.append(f"the input is on {x.device} and the native kernels run on the CPU")
        if not native_built():
            from . import kernels_native

            reasons.append(
                kernels_native.STALE
                or "the native CPU kernels were not built: lovasz was installed without a C compiler "
                "(install gcc or clang and reinstall lovasz; backend='numba' compiles the same kernels on first use)"
            )
    elif name == "numba":
        if x.device.type != "cpu":
            reasons.append(f"the input is on {x.device} and the numba kernels run on the CPU")
        if not numba_installed():
            reasons.append("numba is not installed (pip install numba)")
    elif name == "triton":
        if x.device.type != "cuda" and not _triton_interpreted(x):
            reasons.append(
                f"the input is on {x.device} and the Triton kernels need a CUDA device "
                "(or TRITON_INTERPRET=1, Triton's CPU interpreter, for testing)"
            )
        if not installed("triton"):
            reasons.append("triton is not installed (pip install 'lovasz[cuda]')")
    else:
        reasons.append(f"unknown backend {name!r}; use one of {BACKENDS}")
    return reasons


def _is_launch_error(exc: BaseException) -> bool:
    """Errors of compiling or launching a kernel, as opposed to out-of-memory errors and plain bugs."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    if (type(exc).__module__ or "").split(".")[0] == "triton":
        return True
    return isinstance(exc, RuntimeError | OSError | ImportError | subprocess.CalledProcessError)


class TritonProbe:
    """Whether the Triton kernels compile and launch, decided once per device.

    ``failure(device)`` runs the probe on the first call for that device and returns the exception that
    made it fail, or ``None``.  ``reset()`` forgets every result (the next call probes again).
    """

    def __init__(self) -> None:
        self._results: dict[str, BaseException | None] = {}
        self._warned: set[str] = set()

    def reset(self) -> None:
        self._results.clear()
        self._warned.clear()

    def failure(self, device: torch.device) -> BaseException | None:
        key = str(device)
        if key not in self._results:
            # Not traced by torch.compile (a graph break the first time a device is probed).
            self._results[key] = torch.compiler.disable(self._run)(device)
        return self._results[key]

    def warn_once(self, device: torch.device) -> None:
        key = str(device)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"lovasz: the Triton kernels failed to compile or launch on {key} "
            f"({self._results.get(key)!r}); the binned engine uses the PyTorch implementation on this device. "
            "Pass backend='triton' to make this an error, or backend='torch' to silence it.",
            LovaszFallbackWarning,
            stacklevel=6,  # above warn_once, _triton_works_or_warn, resolve, checks_inputs, the loss: its caller
        )

    @staticmethod
    def _run(device: torch.device) -> BaseException | None:
        try:
            load_kernels("triton")
            with torch.enable_grad():
                _probe_kernels(device)
        except Exception as exc:
            if not _is_launch_error(exc):
                raise
            return exc
        return None


def _probe_kernels(device: torch.device) -> None:
    """Forward and backward of both kernel families on a tiny input."""
    from .fused import fused_binned
    from .histogram import Binning

    g = torch.Generator().manual_seed(0)
    for surrogate in (SOFTMAX, SIGMOID):
        x = torch.randn(2, 3, 64, generator=g).to(device).requires_grad_(True)
        if surrogate.per_class:
            t = torch.randint(0, 3, (2, 64), generator=g).to(device)
        else:
            t = torch.randint(0, 2, (2, 3, 64), generator=g).to(device)
        binning = Binning.for_bins(256)
        losses, _, _ = fused_binned(
            x, t, surrogate=surrogate, per_image=True, ignore_index=None, binning=binning, backend="triton"
        )
        losses.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


triton_probe = TritonProbe()


@_constant_under_compile
def triton_works(device: str) -> bool:
    """Whether the Triton kernels compile and launch on ``device`` (``str(tensor.device)``): the probe's
    verdict, probing on first use.  A constant to ``torch.compile``, which runs it while tracing, so that the
    first compiled call neither breaks the graph at the probe nor compiles again on the second call (as
    it did when the probe's cache was traced)."""
    return triton_probe.failure(torch.device(device)) is None


@_constant_under_compile
def _triton_works_or_warn(device: str) -> bool:
    """:func:`triton_works` for the automatic choice, which skips Triton after a failed probe and says so
    once per device (while tracing, under ``torch.compile``: formatting the warning breaks a graph)."""
    works = triton_works(device)
    if not works:
        triton_probe.warn_once(torch.device(device))
    return works


def _requested(backend: str) -> tuple[str, str]:
    """The backend asked for and where the request came from."""
    check_backend(backend)
    if backend != "auto":
        return backend, f"backend={backend!r}"
    env = os.environ.get(ENV_VAR, "auto")
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR} must be one of {BACKENDS}, got {env!r}")
    return env, f"{ENV_VAR}={env}"


def checks_inputs(backend: str, x: Tensor, bins: int | None) -> bool:
    """Whether the kernels that will serve this call check the scores (NaN/Inf) and the labels (range,
    ``ignore_index``) themselves, with the loss's messages: the native kernels' pass 1 flags them as it
    reads them, so the loss's own checks need no passes over ``input`` and ``target`` (eager, and under
    ``torch.compile``, where the kernels are a custom operator that raises the same ``ValueError``).
    False whenever the choice cannot be made here (the call then raises the resolver's error after the
    checks)."""
    try:
        return resolve(backend, x, bins).name == "native"
    except Exception:  # bad arguments or backends are reported by the call's own checks
        return False


def resolve(backend: str, x: Tensor, bins: int | None) -> Resolved:
    """Choose the implementation for a loss on ``x`` (see the module docstring for the order)."""
    if bins is None:
        check_backend(backend)
        if backend not in ("auto", "torch"):
            raise BackendNotSupportedError(
                f"backend={backend!r} cannot run this call: the {backend} kernels implement the binned engine "
                "only; pass bins=lovasz.DEFAULT_BINS, or backend='auto' for the exact engine"
            )
        return Resolved("torch")
    name, source = _requested(backend)
    if name != "auto":
        reasons = not_supported_reasons(name, x, bins)
        if reasons:
            raise BackendNotSupportedError(f"{source} cannot run this call: " + "; ".join(reasons))
        if name == "torch":
            return Resolved("torch")
        if name == "triton" and not triton_works(str(x.device)):
            exc = triton_probe.failure(x.device)
            raise BackendNotSupportedError(
                f"{source} cannot run this call: the Triton kernels failed to compile or launch on {x.device} ({exc!r})"
            ) from exc
        return Resolved(name)
    for candidate in AUTO_ORDER:
        if candidate == "torch":
            break
        if not_supported_reasons(candidate, x, bins):
            continue
        if candidate == "triton" and not _triton_works_or_warn(str(x.device)):
            continue
        return Resolved(candidate)
    return Resolved("torch")
