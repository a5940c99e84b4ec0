"""The environment variables that lovasz reads, read in one place.

========================  ==================================================================================
``LOVASZ_BACKEND``        the binned engine's backend when the loss's ``backend=`` is ``"auto"``
                          (:mod:`.backends`); unset or ``"auto"``: the automatic choice
``LOVASZ_KEEP_ERRORS``    ``1``: the native kernels keep the softmax errors for backward
                          (:func:`.kernels_native.saves_errors`); unset or ``0``: backward recomputes them
``LOVASZ_THREADS``        ``pool``: the CPU kernels run on a thread pool rather than PyTorch's OpenMP team
                          (:mod:`.cpu_threads`)
``LOVASZ_NO_NATIVE``      ``1``: the C library is not loaded, as where it was not built (read when
                          :mod:`.kernels_native` is first imported)
``TRITON_INTERPRET``      ``1``: Triton's interpreter runs its kernels on the CPU, so the Triton backend
                          serves CPU tensors (for testing kernels without a GPU)
``LOVASZ_CACHE``          the experiment harness's cache of generated data sets (:mod:`lovasz.experiments`);
                          ``~/.cache/lovasz`` when unset
``LOVASZ_FASHION_MNIST``  where the harness finds Fashion-MNIST's gz files; Debian's
                          ``/usr/share/datasets/fashion-mnist`` when unset
========================  ==================================================================================

``torchrun``'s own variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) belong to ``torch.distributed``
and are read by the harness where it joins a process group.

:func:`settings` returns the values read when lovasz was imported, or at the last :func:`reload` (tests
call it after changing the environment).  Under ``torch.compile`` a compiled graph keeps the values it
was traced with, as it keeps any other Python constant it read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Settings", "reload", "settings"]


@dataclass(frozen=True)
class Settings:
    """The environment as lovasz reads it (see the module docstring for each variable)."""

    backend: str
    """``LOVASZ_BACKEND``, ``"auto"`` when unset; validated by the resolver, which names the variable."""
    keep_errors: bool
    """``LOVASZ_KEEP_ERRORS`` set to anything but ``0``."""
    thread_pool: bool
    """``LOVASZ_THREADS=pool``."""
    no_native: bool
    """``LOVASZ_NO_NATIVE=1``."""
    triton_interpret: bool
    """``TRITON_INTERPRET=1``."""
    cache: str
    """``LOVASZ_CACHE``, ``~/.cache/lovasz`` when unset."""
    fashion_mnist: str
    """``LOVASZ_FASHION_MNIST``, ``/usr/share/datasets/fashion-mnist`` when unset."""


def _read() -> Settings:
    env = os.environ
    return Settings(
        backend=env.get("LOVASZ_BACKEND", "auto"),
        keep_errors=env.get("LOVASZ_KEEP_ERRORS", "0") != "0",
        thread_pool=env.get("LOVASZ_THREADS") == "pool",
        no_native=env.get("LOVASZ_NO_NATIVE") == "1",
        triton_interpret=env.get("TRITON_INTERPRET") == "1",
        cache=env.get("LOVASZ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lovasz"),
        fashion_mnist=env.get("LOVASZ_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"),
    )


_CURRENT = _read()


def settings() -> Settings:
    """The environment's settings, as last read."""
    return _CURRENT


def reload() -> Settings:
    """Read the environment again (after a change to ``os.environ``) and return the new settings."""
    global _CURRENT
    _CURRENT = _read()
    return _CURRENT
