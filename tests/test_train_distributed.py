"""``lovasz train`` under ``torchrun`` with 2 CPU processes (gloo): DistributedDataParallel, each rank on
its slice of the global batch, the Lovász term global or per rank, one checkpoint and one results file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


class _Staircase(torch.nn.Module):
    """A fixed 'model' whose argmax is round(10·image) clipped to the classes: no near-ties, so every
    process and batching predicts the same pixels."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        levels = torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1)
        self.levels = torch.nn.Parameter(levels, requires_grad=False)  # a parameter: it tells the device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return -((images[:, :1] * 10 - self.levels) ** 2)


def _evaluate_worker(rank: int, world: int, init: str, out: dict) -> None:
    from lovasz.experiments import data, train
    from lovasz.experiments.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        split = data.load("digits", sizes=(8, 7, 5), size=32)["val"]  # 7 images: shards of 3 and 4
        ctx = DistContext(rank=rank, world=world)
        out[rank] = train.evaluate(_Staircase(data.NUM_CLASSES), split, ctx=ctx)
        dist.barrier()  # as DistContext.close: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def test_evaluation_is_sharded_over_ranks_and_gathered_in_order(tmp_path):
    # Under torchrun every rank evaluates a contiguous shard of the images; the gathered per-image counts
    # give exactly the scores of one process on the whole split, on every rank.
    from lovasz.experiments import data, train

    if not data.available("digits"):
        pytest.skip("the digits data set is not installed")
    split = data.load("digits", sizes=(8, 7, 5), size=32)["val"]
    alone = train.evaluate(_Staircase(data.NUM_CLASSES), split)
    out = mp.Manager().dict()
    mp.spawn(_evaluate_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank].keys() == alone.keys()
        for key, value in alone.items():
            assert out[rank][key] == pytest.approx(value, abs=1e-12), (rank, key)
    assert alone["miou_dataset"] > 0.05  # the staircase model gets some pixels right: not a vacuous check
