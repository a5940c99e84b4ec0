"""The package's layering: the core never reaches into the experiment harness, and ``import lovasz`` stays
light (torch, nothing heavy it does not need)."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import lovasz

CORE = pathlib.Path(lovasz.__file__).parent
HARNESS = CORE / "experiments"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute names of every module that ``path`` imports (relative imports resolved)."""
    package = ".".join(("lovasz", *path.relative_to(CORE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


CORE_FILES = sorted(p for p in CORE.rglob("*.py") if HARNESS not in p.parents)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_does_not_import_the_harness_or_matplotlib(path):
    bad = {
        m
        for m in _imported_modules(path)
        if m.startswith(("lovasz.experiments", "matplotlib", "tqdm", "mlxtend")) or m == "lovasz.experiments"
    }
    assert not bad, f"{path.name} imports {sorted(bad)}: the core must not depend on the harness or its extras"


def test_the_scan_sees_relative_imports(tmp_path, monkeypatch):
    # The check above can fail: a relative import of the harness from a core module is resolved.
    fake = CORE / "engine" / "_fake_for_test.py"
    monkeypatch.setattr(pathlib.Path, "read_text", lambda self: "from ..experiments import cli\nimport matplotlib")
    names = _imported_modules(fake)
    assert {"lovasz.experiments", "lovasz.experiments.cli", "matplotlib"} <= names


def test_import_lovasz_loads_nothing_heavy():
    # Modules that `import lovasz` adds to what `import torch` loads (torch itself may load tqdm, numpy...).
    code = (
        "import sys, torch; before = set(sys.modules)\n"
        "import lovasz, lovasz.sampling, lovasz.engine.backends\n"
        "print(sorted(m for m in set(sys.modules) - before if not m.startswith('lovasz') "
        "or m.startswith('lovasz.experiments') or m.startswith('lovasz.engine.kernels')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip()
    for heavy in ("numba", "triton", "matplotlib", "torchmetrics", "llvmlite", "lovasz.experiments", "kernels"):
        assert heavy not in loaded, f"import lovasz loaded {loaded[:2000]}"


def test_kernels_load_when_the_cpu_binned_engine_first_runs():
    pytest.importorskip("numba")
    from lovasz.engine import backends

    auto = "native" if backends.native_built() else "numba"
    code = (
        "import sys, torch, lovasz\n"
        "x = torch.randn(1, 2, 8); t = torch.zeros(1, 8, dtype=torch.long)\n"
        "lovasz.lovasz_softmax(x, t)\n"
        "assert 'numba' not in sys.modules, 'exact engine loaded numba'\n"
        "lovasz.lovasz_softmax(x, t, bins=256, backend='torch')\n"
        "assert 'numba' not in sys.modules, 'the PyTorch binned engine loaded numba'\n"
        "lovasz.lovasz_softmax(x, t, bins=256)\n"
        "assert 'triton' not in sys.modules\n"
        f"assert ('numba' in sys.modules) == {auto == 'numba'}, 'the native kernels need no numba'\n"
        f"assert 'lovasz.engine.kernels_{'native' if auto == 'native' else 'cpu'}' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_native_kernels_are_built_where_a_c_compiler_is():
    # pip install compiles src/lovasz/engine/_native.c (setup.py, an optional extension); where a compiler
    # exists a missing library is a packaging bug, not a fallback to accept silently.
    import shutil

    from lovasz.engine import kernels_native

    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the numba kernels serve the CPU")
    path = kernels_native.library_path()
    why = kernels_native.STALE or "not built"
    assert kernels_native.AVAILABLE, f"the native kernels are not usable ({why}; library: {path})"


def test_a_native_library_built_from_other_sources_is_refused(monkeypatch):
    # After an edit of _native.c without reinstalling, the old library is not used (its arguments may no
    # longer match); the automatic choice moves on and a request for it says to reinstall.
    from lovasz.engine import kernels_native

    if kernels_native.library_path() is None:
        pytest.skip("the native kernels were not built here")
    monkeypatch.setattr(kernels_native, "STALE", kernels_native.STALE)  # restored afterwards
    monkeypatch.setattr(kernels_native, "_source_digest", lambda: "0" * 16)
    assert kernels_native._load() is None
    assert "built from another version of _native.c" in kernels_native.STALE
    assert "pip install -e ." in kernels_native.STALE
    monkeypatch.setattr(kernels_native, "_source_digest", lambda: None)  # a wheel: no source to compare
    assert kernels_native._load() is not None


def test_numba_cache_goes_to_the_user_cache_not_the_package(tmp_path):
    pytest.importorskip("numba")
    import lovasz.engine as engine

    package_dir = pathlib.Path(engine.__file__).parent
    before = set(package_dir.rglob("*.nbi"))
    code = (
        "import torch, lovasz\n"
        "x = torch.randn(1, 3, 40, requires_grad=True); t = torch.randint(0, 3, (1, 40))\n"
        "lovasz.lovasz_softmax(x, t, bins=256, backend='numba').backward()\n"
    )
    env = dict(os.environ, LOVASZ_CACHE=str(tmp_path))
    env.pop("NUMBA_CACHE_DIR", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
    assert list((tmp_path / "numba").rglob("*.nbi")), "no numba cache index in LOVASZ_CACHE/numba"
    assert set(package_dir.rglob("*.nbi")) == before, "numba wrote its cache into the package"
