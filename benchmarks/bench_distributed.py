"""What the global-batch Lovász loss (``process_group=``) costs over the local one, in real gloo process
groups on this machine, per training step of the demo model (``SmallUNet``, 2 canvases of 64×64 per
rank), in two ways:

* **the loss alone**: the loss's forward+backward on fixed logits, with and without the process group,
  each timed from a barrier to a barrier.  The difference holds the global path's own work, its two
  collectives, and the time a rank waits in them for the slower rank;
* **a whole training step** under ``DistributedDataParallel`` (forward, the loss, backward with DDP's
  gradient all-reduce, the AdamW step), once with the local and once with the global loss.  DDP's
  all-reduce waits for the slowest rank anyway, so waiting that the loss's collectives take over from it
  is not an extra cost; the difference of the two steps is what the global loss adds to training.  It is
  the figure the goal (sync ≤ 5 % of a step) is about.

    python benchmarks/bench_distributed.py                 # 1, 2 and 4 processes
    python benchmarks/bench_distributed.py --procs 2 --rounds 60
    python benchmarks/bench_distributed.py --out benchmarks/results/distributed.md

A second table times the collectives alone (ranks aligned by a barrier before each): a gloo all-reduce of
one float, and of the loss's buffer (the histogram and the head candidates), medians and quartiles.

All ranks run on the same CPU (1 thread each); on separate GPUs the collectives are the same size.  The
1-process row (a group of one) shows what the global path computes beyond the local one, without any
communication or waiting.  Medians over rounds, after warm-up; local and global are interleaved in every
round, and which goes first alternates.  Buffers are reused (the steady state of training).
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
    torch.manual_seed(0)  # the same initial model on every rank, as DDP requires
    model = torch.nn.parallel.DistributedDataParallel(SmallUNet(1, 11, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(1 + rank)
    images = torch.randn(2, 1, 64, 64)
    labels = torch.randint(0, 11, (2, 64, 64))
    group = dist.group.WORLD
    losses = {
        "local": lambda z: lovasz.lovasz_softmax(z, labels, bins=lovasz.DEFAULT_BINS),
        "global": lambda z: lovasz.lovasz_softmax(z, labels, bins=lovasz.DEFAULT_BINS, process_group=group),
    }
    one = torch.zeros(1)

    def sync_point(z: torch.Tensor) -> torch.Tensor:
        """The local loss after an all-reduce of one float: a synchronisation point and nothing else."""
        dist.all_reduce(one, group=group)
        return losses["local"](z)

    steps = {"local": losses["local"], "sync point": sync_point, "global": losses["global"]}
    with torch.no_grad():
        fixed = model(images)
    loss_times: dict[str, list[float]] = {k: [] for k in losses}
    step_times: dict[str, list[float]] = {k: [] for k in steps}
    warmup = 5
    for r in range(rounds + warmup):
        order = list(losses) if r % 2 == 0 else list(reversed(losses))
        for name in order:  # the loss alone, on fixed logits
            z = fixed.detach().requires_grad_(True)
            dist.barrier()
            t0 = time.perf_counter()
            losses[name](z).backward()
            dist.barrier()
            if r >= warmup:
                loss_times[name].append(time.perf_counter() - t0)
        for name in list(steps) if r % 2 == 0 else list(reversed(steps)):  # a whole DDP training step
            dist.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            steps[name](model(images)).backward()
            opt.step()
            dist.barrier()
            if r >= warmup:
                step_times[name].append(time.perf_counter() - t0)
    if rank == 0:
        med = statistics.median
        queue.put(
            {f"loss {k}": med(v) for k, v in loss_times.items()} | {f"step {k}": med(v) for k, v in step_times.items()}
        )
    dist.destroy_process_group()


def _collectives_worker(rank: int, world: int, init_file: str, rounds: int, floats: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    buffers = {"1 float": torch.zeros(1), f"the loss's buffer ({floats * 4 / 1024:.0f} KiB)": torch.zeros(floats)}
    times: dict[str, list[float]] = {k: [] for k in buffers}
    for r in range(rounds + 5):
        for name, buf in buffers.items():
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if r >= 5:
                times[name].append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({k: statistics.quantiles(v, n=4) for k, v in times.items()})
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=40)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "distributed")
    args = p.parse_args()
    tee = Tee().start()
    print(
        "| processes | per rank | loss alone, local (ms) | global (ms) | difference (ms) | DDP step, local loss (ms) "
        "| local loss + a sync point (ms) | global loss (ms) | global − local (ms) | (global − local) / step "
        "| global − sync point (ms) | all-reduce buffer per rank per step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ctx = mp.get_context("spawn")
    for world in args.procs:
        queue = ctx.SimpleQueue()
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _worker, args=(world, os.path.join(tmp, "init"), args.rounds, queue), nprocs=world, join=True
            )  # fmt: skip
        r = {k: 1000 * v for k, v in queue.get().items()}
        sent = _bytes_per_call(False, 4096, 11, 2 * 64 * 64, world)
        loss_d, step_d = r["loss global"] - r["loss local"], r["step global"] - r["step local"]
        beyond = r["step global"] - r["step sync point"]
        print(
            f"| {world} | 2 × 1×64×64, 11 classes | {r['loss local']:.2f} | {r['loss global']:.2f} | {loss_d:.2f} "
            f"| {r['step local']:.1f} | {r['step sync point']:.1f} | {r['step global']:.1f} | {step_d:.2f} "
            f"| {step_d / r['step local']:.1%} | {beyond:.2f} | {sent / 1024:.0f} KiB |",
            flush=True,
        )
    print("\n| processes | gloo all-reduce of | median (ms) | quartiles (ms) |")
    print("|---:|---|---:|---|")
    floats = _bytes_per_call(False, 4096, 11, 2 * 64 * 64, 1) // 4
    for world in [w for w in args.procs if w > 1]:
        queue = ctx.SimpleQueue()
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(
                _collectives_worker, args=(world, os.path.join(tmp, "init"), 4 * args.rounds, floats, queue),
                nprocs=world, join=True,
            )  # fmt: skip
        for name, (q1, q2, q3) in queue.get().items():
            print(f"| {world} | {name} | {1000 * q2:.2f} | {1000 * q1:.2f}–{1000 * q3:.2f} |", flush=True)
    tee.stop()
    if args.out:
        write(
            args.out,
            "The global-batch loss (process_group=) against the local one, gloo",
            tee.text,
            f"every rank on this machine with 1 torch thread; medians of {args.rounds} rounds, local and global "
            "interleaved",
        )


if __name__ == "__main__":
    main()
