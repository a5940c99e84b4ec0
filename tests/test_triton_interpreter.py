"""The Triton kernels on the CPU, under Triton's interpreter, reported check by check.

Triton decides when its kernels are defined whether they run interpreted (``TRITON_INTERPRET=1``), so the
checks run in one child pytest process started with that variable (and the variables that point
tests/test_cuda.py at the CPU and at Triton), which writes a JUnit report; each test here reads its own
checks' outcomes from it and fails with their messages.  A check that did not run, or was skipped, fails
too.  The child's checks: ``tests/triton_cases.py`` (kernels against the PyTorch engine, bin function,
head weights) and the CUDA file's compile and automatic-choice checks (``tests/test_cuda.py``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).parents[1]
CHECKS = [
    ("triton_cases.py", "test_interpreter_is_on"),
    ("triton_cases.py", "test_triton_matches_pytorch_binned_engine"),
    ("triton_cases.py", "test_triton_bin_index_equals_binning_index"),
    ("triton_cases.py", "test_triton_head_weights_equal_head_weights"),
    ("triton_cases.py", "test_triton_fidelity_in_a_crowded_top_bin"),
    ("triton_cases.py", "test_triton_ragged_batches_match_pytorch_binned_engine"),
    ("test_cuda.py", "test_torch_compile_default_backend"),
    ("test_cuda.py", "test_automatic_choice_is_the_fused_backend_without_fallback"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """``(file, check) -> [(case, outcome, message)]`` of the child run (one case per parametrization)."""
    pytest.importorskip("triton")
    xml = tmp_path_factory.mktemp("triton") / "report.xml"
    env = dict(os.environ, TRITON_INTERPRET="1", LOVASZ_TEST_DEVICE="cpu", LOVASZ_TEST_FUSED="triton")
    env["LOVASZ_TEST_COMPILE"] = "1"
    env.pop("LOVASZ_BACKEND", None)
    nodes = [f"tests/{path}::{name}" for path, name in CHECKS]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *nodes]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert xml.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    results: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1] + ".py"
        name = case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome, message = tag, (found.get("message") or "") + "\n" + (found.text or "")
                break
        results.setdefault((module, name.split("[")[0]), []).append((name, outcome, message))
    return results


@pytest.mark.parametrize(("path", "check"), CHECKS, ids=[f"{p}::{c}" for p, c in CHECKS])
def test_under_the_triton_interpreter(report, path, check):
    cases = report.get((path, check))
    assert cases, f"{path}::{check} did not run under the interpreter"
    bad = [f"{name}: {outcome}\n{message[-3000:]}" for name, outcome, message in cases if outcome != "passed"]
    assert not bad, "\n\n".join(bad)
