import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# The test-suite's compiled kernels and generated data sets go to the repository's ignored .cache/, not the
# user's ~/.cache (set before lovasz is imported; subprocesses inherit it).
os.environ.setdefault("LOVASZ_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "lovasz"))

import pytest
import torch

from lovasz.engine import config, registry


def runnable_backends(device: str = "cpu") -> list[str]:
    """The backends of the binned engine that can serve a float32 call on ``device`` in this process, in
    the registry's order: the one source of the backends that tests parametrize over."""
    x = torch.empty(1, 2, 4, device=device)
    return [name for name, spec in registry.REGISTRY.items() if not spec.not_supported_reasons(x, 256)]


CPU_BACKENDS = runnable_backends("cpu")
"""Every binned backend that runs on the CPU here: ``torch``, ``native`` where the C library is built, and
``triton`` under ``TRITON_INTERPRET=1``."""
CPU_FUSED = [name for name in CPU_BACKENDS if registry.REGISTRY[name].fused]
"""The fused ones among them (custom operators around kernel modules)."""


class EnvMonkeyPatch(pytest.MonkeyPatch):
    """``monkeypatch`` whose environment changes reach lovasz: it reads its environment variables once
    (:mod:`lovasz.engine.config`), so every change and the final undo re-read them."""

    def setenv(self, name, value, prepend=None):  # type: ignore[override]
        super().setenv(name, value, prepend)
        config.reload()

    def delenv(self, name, raising=True):  # type: ignore[override]
        super().delenv(name, raising)
        config.reload()

    def undo(self):
        super().undo()
        config.reload()


@pytest.fixture
def monkeypatch():
    patch = EnvMonkeyPatch()
    yield patch
    patch.undo()
