"""Checks an installed lovasz (a wheel, not a checkout): its CPU binned engine runs the native kernels from
the compiled library inside the installation, and numba is not installed.

Run it with the environment's Python from outside the repository (so that ``import lovasz`` finds the
installed package): tests/test_wheel.py does, on the wheel it builds, and so does cibuildwheel's
test-command (pyproject.toml) on each release wheel.  Exits non-zero, saying what is wrong, otherwise
prints what it checked."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig


def fail(message: str) -> None:
    sys.exit(f"check_installed: {message}")


def inside(path: str, folder: str) -> bool:
    path, folder = (os.path.normcase(os.path.realpath(p)) for p in (path, folder))
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # on Windows, paths on different drives
        return False


def main() -> None:
    import torch

    import lovasz
    from lovasz.engine import backends, kernels_native

    site = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    if not any(inside(lovasz.__file__, s) for s in site):
        fail(f"lovasz was imported from {lovasz.__file__}, not from the installation ({', '.join(sorted(site))})")
    if importlib.util.find_spec("numba") is not None:
        fail("numba is installed: lovasz must not depend on it")

    path = kernels_native.library_path()
    if path is None:
        here = os.path.dirname(kernels_native.__file__)
        fail(f"no compiled library next to {kernels_native.__file__} (files: {sorted(os.listdir(here))})")
    if not any(inside(path, s) for s in site):
        fail(f"the native library {path} is not inside the installation ({', '.join(sorted(site))})")
    if not kernels_native.AVAILABLE:
        fail(f"the native library {path} is there but not usable: {kernels_native.STALE or 'it did not load'}")

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    y = torch.randint(0, 3, (2, 16, 16))
    # The automatic choice for a binned call on the CPU (lovasz.explain(...) will say the same in words).
    chosen = backends.resolve("auto", x, 4096).name
    if chosen != "native":
        fail(f"a binned call on the CPU resolves to {chosen!r}, not 'native'")
    loss = lovasz.lovasz_softmax(x, y, bins=4096)
    loss.backward()
    exact = lovasz.lovasz_softmax(x.detach(), y)
    if not (torch.isfinite(loss) and torch.isfinite(x.grad).all()):
        fail(f"the native kernels gave a non-finite loss or gradient ({loss.item()})")
    if abs(loss.item() - exact.item()) > 1e-3:
        fail(f"the binned loss {loss.item():.6f} is far from the exact one {exact.item():.6f}")
    print(f"lovasz {lovasz.__version__} from {os.path.dirname(lovasz.__file__)}")
    print(f"native library {path}; binned CPU backend: {chosen}; loss {loss.item():.6f} (exact {exact.item():.6f})")
    print("numba: not installed")


if __name__ == "__main__":
    main()
