"""Multi-process training for ``lovasz train`` under ``torchrun`` (one process per GPU, or several CPU
processes): the process group, sharding of the global batch, and rank-0-only side effects.

Launched by ``torchrun``, each process finds ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its
environment; :func:`setup` then joins the default process group (``nccl`` on CUDA, ``gloo`` on the CPU).
Every rank builds the same global batches (same seed), and takes the slice ``batch[rank::world]`` of each:
the global batch is the one a single process would train on, split across processes.  With the global
Lovász loss (``--lovasz-sync global``, :mod:`lovasz.distributed`), training is then the one-process
training on that batch, up to floating-point order; with ``--lovasz-sync local``, each rank's Lovász term
sees its own slice only (what every other implementation does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup"]


@dataclass(frozen=True)
class DistContext:
    """The process's place in the training job (``world == 1``: a single process, no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where the collectives' tensors live (CUDA for nccl)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def group(self):
        return dist.group.WORLD if self.world > 1 else None

    def shard(self, batch: list[int] | torch.Tensor) -> list[int]:
        """This rank's slice of a global batch."""
        return torch.as_tensor(batch)[self.rank :: self.world].tolist()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still uses it
            dist.destroy_process_group()


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the default process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); returns the
    context and the device this process trains on (``cuda:LOCAL_RANK`` on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(), device
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # gloo's collectives run on the CPU: a CPU job keeps its loss tensors there.
    return DistContext(rank, world, local_rank, str(device)), device
