"""The release artifacts: ``python -m build`` makes an sdist holding ``_native.c`` and, from that sdist, a
``py3-none-<platform>`` wheel holding the compiled library (a plain shared library, no Python ABI); the
wheel, installed with torch alone into a fresh virtual environment, runs the native kernels from its own
site-packages, without numba.

The build tests are marked slow (a build and a fresh environment with torch: about a minute here):
``-m "not slow"`` leaves them out.
The fresh environment gets ``torch==2.13.0`` (the CPU build that installs from this machine's disk);
``LOVASZ_WHEEL_TEST_TORCH`` names another requirement (e.g. ``torch==2.6.0``) where that one is not at
hand.  It needs a C compiler (skipped without one) and pip's index for the build's setuptools and the
environment's dependencies."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_installed.py"
LIBRARY = "lovasz/engine/_native" + {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
TORCH = os.environ.get("LOVASZ_WHEEL_TEST_TORCH", "torch==2.13.0")


def _has_c_compiler() -> bool:
    names = [os.environ.get("CC", "").split(" ")[0], "cc", "gcc", "clang"] + (["cl"] if os.name == "nt" else [])
    return any(name and shutil.which(name) for name in names)


def _clean_env() -> dict[str, str]:
    """This environment without what would point a subprocess at the checkout or change the backend."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LOVASZ_")}


def _run(cmd: list[str], what: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} took more than {timeout:.0f} s: {' '.join(map(str, cmd))}\n{exc.stdout}\n{exc.stderr}")
    if out.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {out.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout (end)\n{out.stdout[-6000:]}\n--- stderr (end)\n{out.stderr[-6000:]}"
        )
    return out


def _untracked() -> set[str] | None:
    """Untracked, not ignored files of the checkout (None outside a git checkout)."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    return {line[3:] for line in out.stdout.splitlines() if line.startswith("??")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, untracked files before, untracked files after) of ``python -m build`` on the checkout."""
    if not _has_c_compiler():
        pytest.skip("no C compiler on this machine: the wheel would hold no native library")
    if importlib.util.find_spec("build") is None:
        pytest.fail("the 'build' package is missing: pip install -e '.[test]' installs it")
    out_dir = tmp_path_factory.mktemp("dist")
    before = _untracked()
    # The sdist first, then the wheel from the unpacked sdist: the wheel shows what a source install builds.
    _run([sys.executable, "-m", "build", "--outdir", str(out_dir), str(ROOT)], "python -m build", 600, cwd=ROOT)
    after = _untracked()
    sdists, wheels = sorted(out_dir.glob("*.tar.gz")), sorted(out_dir.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"python -m build wrote {sorted(os.listdir(out_dir))}"
    return sdists[0], wheels[0], before, after


@pytest.mark.slow
def test_the_wheel_is_py3_none_platform_and_holds_the_library(built):
    from packaging.utils import parse_wheel_filename

    _, wheel, _, _ = built
    name, _, _, tags = parse_wheel_filename(wheel.name)
    assert name == "lovasz"
    assert {(t.interpreter, t.abi) for t in tags} == {("py3", "none")}, f"{wheel.name}: not a py3-none wheel"
    assert all(t.platform != "any" for t in tags), f"{wheel.name}: a library needs a platform tag"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        wheel_file = z.read(info).decode()
        metadata = z.read(info.replace("/WHEEL", "/METADATA")).decode()
        library = z.getinfo(LIBRARY) if LIBRARY in names else None
    assert library is not None, f"{wheel.name} holds no {LIBRARY}: {[n for n in names if '/engine/' in n]}"
    assert library.file_size > 10_000, f"{LIBRARY} is {library.file_size} bytes"
    assert "lovasz/engine/_native.c" not in names, "the wheel ships the C source; it should ship the library"
    assert not [n for n in names if ".cpython-" in n or n.endswith(".pyd")], "a CPython-ABI file in the wheel"
    assert "Root-Is-Purelib: false" in wheel_file
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if "numba" in r], f"the wheel still requires numba: {requires}"
    assert any(r.startswith("Requires-Dist: torch>=") for r in requires), requires


@pytest.mark.slow
def test_the_sdist_holds_the_c_source_and_no_compiled_library(built):
    sdist, _, _, _ = built
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    for needed in ("setup.py", "pyproject.toml", "src/lovasz/engine/_native.c", "src/lovasz/engine/kernels_native.py"):
        assert needed in names, f"{sdist.name} lacks {needed}"
    compiled = [n for n in names if n.endswith((".so", ".dylib", ".dll", ".pyd"))]
    assert not compiled, f"{sdist.name} ships compiled files: {compiled}"


@pytest.mark.slow
def test_the_build_leaves_no_untracked_files(built):
    _, _, before, after = built
    if before is None:
        pytest.skip("not a git checkout")
    assert after <= before, f"python -m build left untracked files (add them to .gitignore): {sorted(after - before)}"


@pytest.mark.slow
def test_the_installed_wheel_runs_the_native_kernels_without_numba(built, tmp_path):
    _, wheel, _, _ = built
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], "creating a virtual environment", 300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([str(python), "-m", "pip", "install", "-q", TORCH, str(wheel)], f"pip install {TORCH} {wheel.name}", 900)
    # From outside the checkout, so that ``import lovasz`` can only find the installed wheel.
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = work / CHECK.name
    shutil.copyfile(CHECK, script)
    out = _run([str(python), str(script)], "the installed wheel's check (scripts/check_installed.py)", 300, cwd=work)
    assert "binned CPU backend: native" in out.stdout, out.stdout


def test_setup_exports_every_function_that_kernels_native_calls():
    # On Windows the DLL exports only what setup.py lists (found in _native.c by its DEFINITION pattern);
    # a function ctypes looks up but the list misses would leave the native kernels unusable there only.
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (pattern,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["DEFINITION"]
    ]
    source = (ROOT / "src/lovasz/engine/_native.c").read_text(encoding="utf-8")
    exported = set(re.findall(pattern, source, re.M))
    called = set(re.findall(r"\.(lovasz_\w+)\b", (ROOT / "src/lovasz/engine/kernels_native.py").read_text()))
    assert called, "kernels_native.py calls no lovasz_* function: the pattern above needs updating"
    assert called <= exported, f"setup.py would not export {sorted(called - exported)} from the DLL"
    static = set(re.findall(r"^static\b[^;{(]*?\b(lovasz_\w+)\s*\(", source, re.M))
    assert not exported & static, f"setup.py would export static functions {sorted(exported & static)}"
