"""The benchmarks' own arithmetic (rounds, pairing, the median's interval; not their timings), and a tiny
run of the engine benchmark."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_binned.py"
spec = importlib.util.spec_from_file_location("bench_binned", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize(("n", "ranks"), [(15, (4, 12)), (30, (10, 21)), (100, (40, 61))])
def test_median_interval_matches_the_binomial_table(n, ranks):
    # 1-based ranks of the distribution-free 95 % interval for a median (the binomial(n, 1/2) tables).
    lo, hi = bench.median_interval(n)
    assert (lo + 1, hi + 1) == ranks


def test_small_samples_give_the_whole_range():
    assert bench.median_interval(3) == (0, 2)


def test_compiled_rows_are_paired_with_their_eager_twin():
    torch._dynamo.reset()
    rows = bench.run(["2x1x8x8"], rounds=3, compile_too=True, min_seconds=0.05)
    torch._dynamo.reset()
    names = [r["method"] for r in rows]
    compiled = [r for r in rows if r["method"].endswith(bench.COMPILED)]
    assert len(compiled) == 3 and names[0].startswith("BCE")
    for r in rows:
        assert r["rounds"] >= 3 and r["ms"] > 0  # min_seconds may add rounds, never remove them
    for r in compiled:
        assert names.index(r["method"]) == names.index(r["method"].removesuffix(bench.COMPILED)) + 1
        assert r["vs_eager_lo"] <= r["vs_eager"] <= r["vs_eager_hi"]
    text = bench.table(rows, "warm")
    assert text.count("\n| 2x1x8x8 |") == len(rows) and "[95 %]" in text


# The engine benchmark runs at a tiny size


def test_engine_benchmark_runs():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_engine.py"
    args = ["--sizes", "1x3x8x8", "--methods", "ce", "exact", "fast", "--repeats", "1"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    assert "lovasz binned" in out and "| 1x3x8x8 |" in out and "error" not in out.lower()


def test_pointcloud_benchmark_runs(tmp_path):
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_pointcloud.py"
    args = ["--points", "300", "500", "--classes", "5", "--rounds", "1", "--out", str(tmp_path / "p.md")]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    assert "| lovasz_softmax per scan, binned |" in out and "| reference, loop per scan |" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| lovasz_softmax per scan, exact")]
    ref = [line.split("|") for line in out.splitlines() if line.startswith("| reference, loop per scan")]
    assert abs(float(rows[0][6]) - float(ref[0][6])) < 1e-4  # the loss column: the same per-scan loss
    assert (tmp_path / "p.md").read_text().startswith("# Point clouds")
