"""What the global-batch Lovász loss (``process_group=``) costs over the local one, in real gloo process
groups on this machine: per training step, the bytes each rank sends into the collectives, the time of the
loss's forward+backward with and without the process group, and that difference against a whole training
step of the demo model (``SmallUNet``, 2 canvases of 64×64 per rank, forward + backward + the loss).

    python benchmarks/bench_distributed.py                 # 1, 2 and 4 processes
    python benchmarks/bench_distributed.py --procs 2 --rounds 30

All ranks run on the same CPU (1 thread each), so the time also includes waiting for the slowest rank; on
separate GPUs the collectives are the same size.  The 1-process row (a group of one) splits the cost: what
the global path computes beyond the local one, without any communication or waiting.  Medians over
rounds, after warm-up; the local and the global loss are interleaved in every round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _bytes_per_call(per_image: bool, bins: int | None, classes: int, pixels_per_rank: int, world: int) -> int:
    """What one rank contributes to the collectives of one loss call (forward; backward sends nothing)."""
    import lovasz
    from lovasz.engine import Binning
    from lovasz.engine.histogram import HEAD

    if per_image:
        return 2 * 4  # the sum of the local images' losses and their count (float32)
    if bins is None:  # all_gather of errors (float32) and two byte masks, plus the sizes
        return classes * pixels_per_rank * (4 + 2) + 8
    k = Binning.for_bins(bins if bins else lovasz.DEFAULT_BINS).num_bins
    # anchors (float32 max) + histogram and every rank's block of exact-head candidates (one float32 sum)
    return classes * 4 + classes * k * 4 * 4 + world * classes * HEAD * 3 * 4


def _worker(rank: int, world: int, init_file: str, rounds: int, queue) -> None:
    import lovasz
    from lovasz.experiments.models import SmallUNet

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)
    model = SmallUNet(1, 11, 16)
    images = torch.randn(2, 1, 64, 64)
    labels = torch.randint(0, 11, (2, 64, 64))
    group = dist.group.WORLD
    variants = {
        "local loss (per rank)": lambda z: lovasz.lovasz_softmax(z, labels, bins=lovasz.DEFAULT_BINS),
        "global loss (process_group)": lambda z: lovasz.lovasz_softmax(
            z, labels, bins=lovasz.DEFAULT_BINS, process_group=group
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    steps: list[float] = []
    for r in range(rounds + 3):
        for name, fn in variants.items():
            z = model(images).detach().requires_grad_(True)
            dist.barrier()
            t0 = time.perf_counter()
            fn(z).backward()
            dist.barrier()
            if r >= 3:
                times[name].append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        loss = variants["global loss (process_group)"](model(images))
        loss.backward()
        dist.barrier()
        if r >= 3:
            steps.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({k: statistics.median(v) for k, v in times.items()} | {"step": statistics.median(steps)})
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    print(
        "| processes | per rank | loss fwd+bwd, local (ms) | global (ms) | sync cost (ms) | training step (ms) "
        "| sync / step | bytes sent per rank per step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    ctx = mp.get_context("spawn")
    for world in args.procs:
        queue = ctx.SimpleQueue()
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _worker, args=(world, os.path.join(tmp, "init"), args.rounds, queue), nprocs=world, join=True
            )  # fmt: skip
        r = queue.get()
        local, glob, step = (1000 * r[k] for k in ("local loss (per rank)", "global loss (process_group)", "step"))
        sent = _bytes_per_call(False, 4096, 11, 2 * 64 * 64, world)
        print(
            f"| {world} | 2 × 1×64×64, 11 classes | {local:.2f} | {glob:.2f} | {glob - local:.2f} | {step:.1f} "
            f"| {(glob - local) / step:.1%} | {sent / 1024:.0f} KiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
