"""Threads for the fused CPU kernels: PyTorch's OpenMP team where possible, else a thread pool.

Used by the C kernels (:mod:`.kernels_native`); imports no compiled library itself."""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch

from . import config

__all__ = ["OpenMP", "openmp", "run_on_pool", "use_pool", "workers"]


class OpenMP:
    """The OpenMP runtime that PyTorch's CPU operators run on, to run the kernels on *its* threads.

    After a parallel PyTorch operator, OpenMP's worker threads spin for a while (libgomp: ~300,000 pause
    iterations, several milliseconds) waiting for more work.  Kernels on threads of their own would share
    the cores with those spinning threads (``docs/engine.md`` gives the benchmark).  ``GOMP_parallel``
    (exported by libgomp, and for compatibility by LLVM's and Intel's runtimes) runs a callback on the
    runtime's own team instead; the C library (:mod:`.kernels_native`) calls it with its kernels.  Found
    through ``/proc/self/maps`` (Linux) when PyTorch's parallel backend is OpenMP; elsewhere the kernels
    use a thread pool."""

    def __init__(self) -> None:
        self.lib = None
        try:
            if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
                return
            with open("/proc/self/maps") as maps:
                paths = [line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]]
            for path in dict.fromkeys(paths):
                lib = ctypes.CDLL(path)
                if hasattr(lib, "GOMP_parallel"):  # the C library calls it, with the kernels as callback
                    self.lib = lib
                    return
        except (OSError, AttributeError):  # no /proc, or a runtime without these symbols: use the pool
            self.lib = None


_OPENMP: OpenMP | None = None


def openmp() -> OpenMP:
    """The process's :class:`OpenMP` (looked up once)."""
    global _OPENMP
    if _OPENMP is None:
        _OPENMP = OpenMP()
    return _OPENMP


def use_pool() -> bool:
    """Whether the kernels run on a thread pool: ``LOVASZ_THREADS=pool``, or no OpenMP team to share."""
    return config.settings().thread_pool or openmp().lib is None


def workers(units: int) -> int:
    """Threads for ``units`` independent units: ``torch.get_num_threads()``, at most one per unit."""
    return max(1, min(torch.get_num_threads(), units))


_POOL: ThreadPoolExecutor | None = None


def run_on_pool(call, units: int, tasks: int, workers: int) -> None:
    """Run ``call(u0, u1)`` over ``units`` split into ``tasks`` contiguous ranges on a thread pool of
    ``workers`` threads (the kernels release the GIL); re-raise the first exception."""
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lovasz")
    bounds = [units * k // tasks for k in range(tasks + 1)]
    futures = [_POOL.submit(call, bounds[k], bounds[k + 1]) for k in range(tasks) if bounds[k] < bounds[k + 1]]
    for f in futures:
        f.result()
