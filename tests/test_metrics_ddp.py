"""SegmentationIoU under torch.distributed: two CPU processes (gloo) agree with one process on all data."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lovasz.metrics import SegmentationIoU


def _data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 8, 8, generator=g)
    target = torch.randint(0, 4, (6, 8, 8), generator=g)
    target[0, :2] = 255
    return logits, target


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, target = _data()
        metric = SegmentationIoU(num_classes=4, ignore_index=255)
        shard = slice(rank * 3, rank * 3 + 3)
        metric.update(logits[shard], target[shard])
        out[rank] = metric.compute()
        local = SegmentationIoU(num_classes=4, ignore_index=255, sync_on_compute=False)
        local.update(logits[shard], target[shard])
        out[f"local{rank}"] = local.compute()
        dist.barrier()  # as DistContext.close: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_sync_equals_single_process():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    logits, target = _data()
    single = SegmentationIoU(num_classes=4, ignore_index=255)
    single.update(logits, target)
    want = single.compute()
    for rank in (0, 1):
        got = out[rank]
        assert torch.equal(got["confusion_matrix"], want["confusion_matrix"])
        for key in ("miou_dataset", "miou_image", "miou_class_image", "miou_image_worst", "miou_class_image_worst"):
            assert got[key] == pytest.approx(want[key]), key
        # without the sync, a shard alone gives other numbers: the comparison above can fail
        assert not torch.equal(out[f"local{rank}"]["confusion_matrix"], want["confusion_matrix"])
