"""The Triton probe: whether the Triton kernels compile and launch on a device, decided once per device.

The probe runs a tiny forward *and* backward of both kernel families (class and channel layout) through
the fused path (:func:`.fused.fused_binned`).  Only errors of compilation or launch (exceptions raised by
Triton itself, runtime errors of the driver, a missing compiler toolchain) count as a failure;
out-of-memory errors and plain bugs propagate.  The results live in :data:`triton_probe`;
``triton_probe.reset()`` forgets them.  The resolver (:mod:`.backends`) reads the verdict through
:func:`triton_works`, a constant to ``torch.compile``.
"""

from __future__ import annotations

import subprocess
import warnings

import torch

from ..surrogates import SIGMOID, SOFTMAX
from .registry import LovaszFallbackWarning, _constant_under_compile

__all__ = ["TritonProbe", "is_launch_error", "triton_probe", "triton_works"]


def is_launch_error(exc: BaseException) -> bool:
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

    def known_failure(self, device: torch.device) -> BaseException | None:
        """The failure recorded for ``device``, without probing (``None`` if it passed or was not probed)."""
        return self._results.get(str(device))

    def warn_once(self, device: torch.device, stacklevel: int) -> None:
        key = str(device)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"lovasz: the Triton kernels failed to compile or launch on {key} "
            f"({self._results.get(key)!r}); the binned engine uses another backend on this device. "
            "Pass backend='triton' to make this an error, or backend='torch' to silence it.",
            LovaszFallbackWarning,
            stacklevel=stacklevel + 1,
        )

    @staticmethod
    def _run(device: torch.device) -> BaseException | None:
        from . import registry

        try:
            registry.load_kernels("triton")
            with torch.enable_grad():
                _probe_kernels(device)
        except Exception as exc:
            if not is_launch_error(exc):
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
        result = fused_binned(
            x, t, surrogate=surrogate, per_image=True, ignore_index=None, binning=binning, backend="triton"
        )
        result.losses.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


triton_probe = TritonProbe()


@_constant_under_compile
def triton_works(device: str) -> bool:
    """Whether the Triton kernels compile and launch on ``device`` (``str(tensor.device)``): the probe's
    verdict, probing on first use.  A constant to ``torch.compile``, which runs it while tracing, so that the
    first compiled call neither breaks the graph at the probe nor compiles again on the second call."""
    return triton_probe.failure(torch.device(device)) is None
