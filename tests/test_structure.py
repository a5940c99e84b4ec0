"""The package's layering: the core never reaches into the experiment harness, and ``import lovasz`` stays
light (torch, nothing heavy it does not need)."""

from __future__ import annotations

import ast
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


def _engine_import_graph() -> dict[str, set[str]]:
    """Which modules of lovasz.engine each one imports, counting imports inside functions (the package
    itself, whose __init__ gathers the public names, left out)."""
    engine = CORE / "engine"
    modules = {f"lovasz.engine.{p.stem}": p for p in engine.glob("*.py") if p.stem != "__init__"}
    return {name: _imported_modules(path) & set(modules) for name, path in modules.items()}


def test_engine_modules_import_each_other_without_cycles():
    # The registry declares, fused runs kernels, the probe runs fused, the resolver reads the registry and
    # the probe: each layer imports only those below it, inside functions too.
    graph = _engine_import_graph()
    assert "lovasz.engine.fused" not in graph["lovasz.engine.registry"]
    assert "lovasz.engine.backends" not in graph["lovasz.engine.fused"]
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


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
    for heavy in ("triton", "matplotlib", "torchmetrics", "lovasz.experiments", "kernels"):
        assert heavy not in loaded, f"import lovasz loaded {loaded[:2000]}"


def test_kernels_load_when_the_cpu_binned_engine_first_runs():
    from lovasz.engine import registry

    code = (
        "import sys, torch, lovasz\n"
        "x = torch.randn(1, 2, 8); t = torch.zeros(1, 8, dtype=torch.long)\n"
        "lovasz.lovasz_softmax(x, t)\n"
        "assert 'lovasz.engine.kernels_native' not in sys.modules, 'the exact engine loaded the C kernels'\n"
        "lovasz.lovasz_softmax(x, t, bins=256, backend='torch')\n"
        "assert 'lovasz.engine.kernels_native' not in sys.modules, 'the PyTorch binned engine loaded them'\n"
        "lovasz.lovasz_softmax(x, t, bins=256)\n"
        "assert 'triton' not in sys.modules\n"
        "assert 'lovasz.engine.kernels_native' in sys.modules\n"
    )
    if not registry.native_built():
        pytest.skip("the native kernels were not built here")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_native_kernels_are_built_where_a_c_compiler_is():
    # pip install compiles src/lovasz/engine/_native.c (setup.py, an optional extension); where a compiler
    # exists a missing library is a packaging bug, not a fallback to accept silently.
    import shutil

    from lovasz.engine import kernels_native

    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler on this machine: the PyTorch engine serves the CPU")
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
