"""The backends of the binned engine, each declared once: what it serves, what its kernels can do, how to
load them.

A :class:`Backend` names its devices, dtypes and surrogates, its :class:`Capabilities` (what the fused
path in :mod:`.fused` may ask of its kernel module) and the module that holds its kernels.  :data:`REGISTRY`
holds every backend by name and :data:`AUTO_ORDER` is the order in which the automatic choice
(:mod:`.backends`) tries them.  Adding a backend is one entry here and one kernel module.

Everything here is a per-process look-up or a declaration: nothing imports :mod:`.fused` or the resolver.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal, TypeVar

import torch
from torch import Tensor

from .. import surrogates
from ..types import BACKENDS
from . import config

__all__ = [
    "AUTO_ORDER",
    "REGISTRY",
    "Backend",
    "BackendNotSupportedError",
    "Capabilities",
    "LovaszFallbackWarning",
    "installed",
    "load_kernels",
    "native_built",
    "spec",
]

_Fn = TypeVar("_Fn", bound=Callable[..., bool])


class LovaszFallbackWarning(RuntimeWarning):
    """The automatic choice skipped a backend that would have served the call (the C library not built,
    Triton failing its probe) and uses another; said once per process (per device, for Triton)."""


class BackendNotSupportedError(ValueError):
    """A backend was asked for (argument or ``LOVASZ_BACKEND``) that cannot serve the call."""


def _constant_under_compile(fn: _Fn) -> _Fn:
    """Marks ``fn`` as ``torch.compiler.assume_constant_result`` does (the attribute it sets), without
    importing Dynamo when lovasz is imported.

    For the per-process look-ups (what is installed or built, the Triton probe's verdict per device), whose
    results do not change once known: ``torch.compile`` runs them while tracing and neither traces into
    them nor guards on the caches they fill.  Traced, the first compiled call would guard on a cache
    *before* filling it, and so compile the whole graph (a user's whole training step) a second time on
    the second call (``tests/test_compile.py::test_first_compiled_calls_compile_once``).  After
    ``triton_probe.reset()``, graphs compiled earlier keep the verdict they were traced with
    (``torch._dynamo.reset()`` forgets them)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


_INSTALLED: dict[str, bool] = {}


@_constant_under_compile
def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (looked up once per process)."""
    if package not in _INSTALLED:
        _INSTALLED[package] = importlib.util.find_spec(package) is not None
    return _INSTALLED[package]


@_constant_under_compile
def native_built() -> bool:
    """Whether the C library of the native kernels was built and loads (looked up once per process)."""
    if "native" not in _INSTALLED:
        from . import kernels_native

        _INSTALLED["native"] = kernels_native.AVAILABLE
    return _INSTALLED["native"]


def _native_missing() -> list[str]:
    if native_built():
        return []
    from . import kernels_native

    return [
        kernels_native.STALE
        or "the native CPU kernels were not built: lovasz was installed without a C compiler "
        "(install gcc or clang and reinstall lovasz)"
    ]


def _triton_missing() -> list[str]:
    return [] if installed("triton") else ["triton is not installed (pip install 'lovasz[cuda]')"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend's kernel module offers beyond the contract of :mod:`.fused` (``histogram``, ``head``,
    ``backward``).  Each flag promises the functions or keyword arguments it names."""

    local_losses: bool = False
    """``losses(...)``: a local loss in one call (histogram, tables, the head and its exact weights)."""
    global_losses: bool = False
    """``global_losses(..., sync=)``: the loss across processes in the kernels' own steps."""
    keeps_errors: bool = False
    """``errors=``: forward writes the errors into a buffer shaped like the scores, which ``head`` reads;
    ``saves_errors(surrogate)`` says whether backward reads them too (then the scores are not saved)."""
    skips_absent: bool = False
    """``losses(present_only=True)`` leaves out the groups without a foreground label."""
    scales_table: bool = False
    """``backward(scale=)`` applies each group's upstream gradient to its table entries as it reads them."""
    checks_inputs: bool = False
    """Forward refuses NaN/Inf scores and bad labels with the loss's messages, so the loss skips those
    value checks."""
    cpu_tables: bool = False
    """``tables(cells, head)``: the losses and weight table of a CPU histogram, in the kernels."""
    ragged_groups: bool = False
    """``histogram``/``losses``/``head``/``backward`` take ``sample=`` (``[B]`` int64 sample id of each image,
    ``num_samples=``): per-image groups are ``(sample[b], c)`` pairs (ragged batches, ``batch=`` of the
    losses).  The PyTorch engine always can."""
    table_layout: Literal["GK2", "G2K"] = "GK2"
    """The weight table forward hands to backward: ``"GK2"`` (``[G, K, 2]``, the engine's) or ``"G2K"``
    (``[G, 2, K]``; the module's ``table_arg`` and ``empty_table`` make and allocate it)."""


@dataclass(frozen=True)
class Backend:
    """One implementation of the binned engine (``"torch"`` also serves the exact engine)."""

    name: str
    devices: tuple[str, ...]
    """Device types it runs on (``"cpu"``, ``"cuda"``; empty: every device); the CPU too for Triton under
    ``TRITON_INTERPRET=1``."""
    dtypes: tuple[torch.dtype, ...]
    """Input dtypes it computes in (others are converted: half precision to float32)."""
    surrogates: frozenset[str]
    """Names of the surrogates (:mod:`lovasz.surrogates`) its kernels implement."""
    where: str
    """Where it runs, in words, for the reasons (``"run on the CPU"``)."""
    module: str | None
    """The kernel module (``None``: the PyTorch engine, no fused kernels)."""
    capabilities: Capabilities = field(default_factory=Capabilities)
    missing: Callable[[], list[str]] = field(default=lambda: [], repr=False)
    """Why the backend cannot run in this process at all (not built, not installed); empty if it can."""
    exact: bool = False
    """Whether it also serves the exact engine (``bins=None``)."""
    auto_exact_below: int = 16384
    """``bins="auto"`` takes the exact engine for groups of fewer elements than this where this backend
    would run the binned one: below it the sort costs less than the table of bins
    (``benchmarks/bench_auto.py``)."""

    @property
    def fused(self) -> bool:
        """Whether the backend runs fused kernels rather than the PyTorch engine."""
        return self.module is not None

    def serves_device(self, device: torch.device) -> bool:
        """Whether the backend runs on ``device``."""
        if not self.devices or device.type in self.devices:
            return True
        return self.name == "triton" and device.type == "cpu" and config.settings().triton_interpret

    def not_supported_reasons(
        self,
        x: Tensor,
        bins: int | None,
        surrogate: str | surrogates.Surrogate | None = None,
        ragged: bool = False,
    ) -> list[str]:
        """Why this backend cannot evaluate the loss of ``x`` with ``bins`` (and ``surrogate``, when
        given; ``ragged``: per-sample groups of a ``batch=`` vector); empty if it can.  A run-time verdict
        (the Triton probe) is not part of these reasons."""
        reasons = []
        if ragged and self.fused and not self.capabilities.ragged_groups:
            reasons.append(
                f"the {self.name} kernels do not group points by a batch= vector (per-sample losses of a ragged "
                "batch); backend='torch' does"
            )
        if bins is None and not self.exact:
            reasons.append(f"the {self.name} kernels implement the binned engine only (bins=None is the exact engine)")
        if x.dtype == torch.float64 and torch.float64 not in self.dtypes:
            reasons.append(
                f"the input is float64 and the {self.name} kernels compute in float32 (backend='torch' keeps float64)"
            )
        if not self.serves_device(x.device):
            reasons.append(f"the input is on {x.device} and the {self.name} kernels {self.where}")
        if surrogate is not None:
            s = surrogates.get(surrogate)
            if s.name not in self.surrogates:
                reasons.append(f"the {self.name} kernels do not implement the {s.name} surrogate")
        reasons.extend(self.missing())
        return reasons

    def load(self) -> ModuleType:
        """The kernel module, imported on first use; raises ``ImportError`` where it cannot run."""
        if self.module is None:
            raise ValueError(f"backend {self.name!r} has no fused kernels")
        missing = self.missing()
        if missing:
            raise ImportError("; ".join(missing))
        return importlib.import_module(self.module)


_ALL = frozenset(surrogates.SURROGATES)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)

REGISTRY: dict[str, Backend] = {
    "torch": Backend(
        name="torch",
        devices=(),
        dtypes=(*_FLOATS, torch.float64),
        surrogates=_ALL,
        where="run on any device",
        module=None,
        exact=True,
    ),
    "native": Backend(
        name="native",
        devices=("cpu",),
        dtypes=_FLOATS,
        surrogates=_ALL,
        where="run on the CPU",
        module="lovasz.engine.kernels_native",
        capabilities=Capabilities(
            local_losses=True,
            global_losses=True,
            keeps_errors=True,
            skips_absent=True,
            scales_table=True,
            checks_inputs=True,
            cpu_tables=True,
            ragged_groups=True,
            table_layout="G2K",
        ),
        missing=_native_missing,
        auto_exact_below=1024,
    ),
    "triton": Backend(
        name="triton",
        devices=("cuda",),
        dtypes=_FLOATS,
        surrogates=_ALL,
        where="need a CUDA device (or TRITON_INTERPRET=1, Triton's CPU interpreter, for testing)",
        module="lovasz.engine.kernels_triton",
        capabilities=Capabilities(ragged_groups=True),
        missing=_triton_missing,
    ),
}
"""Every backend by name (the names of :data:`lovasz.types.BackendName` but ``"auto"``)."""

AUTO_ORDER: tuple[str, ...] = ("triton", "native", "torch")
"""The automatic choice takes the first of these that can serve the call."""


def spec(name: str) -> Backend:
    """The declaration of backend ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; use one of {BACKENDS}") from None


def load_kernels(name: str) -> ModuleType:
    """The kernel module of backend ``name``, imported on first use: the one place that imports a kernel
    module (tests replace it to simulate kernels that fail)."""
    return spec(name).load()
