"""``lovasz train`` under ``torchrun`` with 2 CPU processes (gloo): DistributedDataParallel, each rank on
its slice of the global batch, the Lovász term global or per rank, one checkpoint and one results file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
LOVASZ = shutil.which("lovasz", path=os.path.dirname(sys.executable)) or shutil.which("lovasz")


@pytest.mark.skipif(TORCHRUN is None or LOVASZ is None, reason="torchrun or the lovasz command not found")
@pytest.mark.parametrize("sync", ["global", "local"])
def test_lovasz_train_under_torchrun(sync, tmp_path):
    from lovasz.experiments import data

    if not data.available("digits"):
        pytest.skip("the digits data set is not installed")
    out = tmp_path / "run"
    cmd = [
        TORCHRUN, "--standalone", "--nproc-per-node", "2", "--no-python", LOVASZ, "train",
        "--data", "digits", "--loss", "ce+lovasz", "--lovasz-sync", sync, "--epochs", "1", "--train-size", "64",
        "--batch-size", "8", "--width", "8", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, LOVASZ_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("training ce+lovasz") == 1  # rank 0 alone logs
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["lovasz_sync"] == sync
    assert 0.0 <= results["test"]["miou_dataset"] <= 1.0
