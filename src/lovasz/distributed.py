"""The Lovász loss of the global batch across processes (``process_group=...``).

With ``per_image=False`` the loss is meant as a proxy for the dataset IoU: every class's pixels of the
whole batch form one set.  Under data parallelism each process sees only its local batch, often 2–4
images, and a loss computed locally optimises something closer to per-image IoU.  With a process group,
every rank computes the loss of the *union* of all ranks' batches:

* **binned engine**: each rank computes its groups' anchors (largest errors); one all-reduce (max) makes
  them global; each rank bins its pixels into a histogram; one all-reduce (sum) of the ``[C, K, 2, 2]``
  histogram makes it global (:class:`lovasz.engine.Histogram` is additive), sent as float32.  The exact
  head (each class's highest bins holding at most ``HEAD`` = 32 pixels) travels in the same all-reduce:
  each rank adds the candidates of its own local head (a superset of its part of the global one) in a
  block of its own, and every rank keeps those in the global head's bins.  Every rank then has the same
  losses, weight table and head weights, and backward needs only its local scores.  Traffic per call:
  ``4·C·(1 + 4·K + 3·32·world_size)`` bytes, whatever the number of pixels (``K = bins``: 0.7 MB at 11
  classes).
* **exact engine**: the errors and labels of every rank are gathered (``all_gather``, padded to the
  largest rank's size), and the exact loss of the union is computed on every rank; the gradient flows
  back to the local slice.  Traffic per call: about ``C × (all pixels of the global batch) × 6`` bytes
  (float32 errors plus two byte masks), so prefer the binned engine across processes.
* **per image** (``per_image=True``): an image's loss depends on its own pixels only, so nothing but the
  final mean is synchronised: the sum of the local images' losses and their count (images with no valid
  pixel or no selected class count nowhere).

**Gradient convention.**  The value is the same on every rank: the one-process loss of the concatenated
inputs.  Each rank's gradient w.r.t. its own inputs is ``world_size ×`` its slice of the one-process
gradient, so that ``DistributedDataParallel``, which *averages* parameter gradients over ranks, yields
exactly the one-process gradient.  (``reduction="none"`` with ``per_image=True`` returns the local
images' losses, which are not synchronised and not scaled.)

Every rank must call the loss, with the same options, also when its local batch is empty or fully
ignored (an input with ``B = 0`` is accepted with a process group); otherwise the collectives wait.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ProcessSync"]


class ProcessSync:
    """The collectives that the engine and the reduction need, for one process group."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "process_group is given but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first, or pass process_group=None for a local loss"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def all_max(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def all_sum(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def sum_in_place(self, t: Tensor) -> None:
        """All-reduce (sum) of ``t`` into ``t`` itself (a buffer the caller made for it)."""
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)

    def sum_histogram(
        self, cells: Tensor, head: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All-reduce (sum) of a merged histogram ``[1, G, K, 2, 2]`` float64, sent as float32 (half the
        bytes; counts exact up to 2^24 per cell, error sums to ~1e-7 relative; float64 for a float64
        loss), together with this rank's
        candidates for the exact head, ``head = (values, fg, bins)``, each ``[G, H]`` (values -1 where
        unused): in the same all-reduce, each rank's in its own block, to which the others add zeros.
        Returns the global histogram and every rank's candidates side by side, ``[G, world_size·H]``."""
        g, h = head[0].shape
        dtype = torch.float64 if head[0].dtype == torch.float64 else torch.float32  # float64 losses: all float64
        n = cells.numel()
        out = cells.new_empty(n + self.world_size * 3 * g * h, dtype=dtype)  # one buffer, filled in place
        out[:n].copy_(cells.reshape(-1))
        block = out[n:].view(self.world_size, 3, g, h)
        block.zero_()
        for i, part in enumerate(head):
            block[self.rank, i].copy_(part)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        total = out[:n].view(cells.shape).to(torch.float64)
        values, fg, bins = block.permute(1, 2, 0, 3).reshape(3, g, -1)
        return total, values, fg > 0.5, bins.round().to(torch.int64)

    def gather_columns(self, errors: Tensor, fg: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``[G, P_r]`` rows of every rank concatenated along dim 1 (padded with invalid elements); the local
        block keeps its autograd history, so the gradient flows back to this rank's errors."""
        p = errors.shape[1]
        sizes = [torch.zeros(1, dtype=torch.int64, device=errors.device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([p], dtype=torch.int64, device=errors.device), group=self.group)
        pad = max(int(s) for s in sizes) - p
        v = torch.ones_like(fg) if valid is None else valid
        local_e = F.pad(errors, (0, pad))
        local_masks = F.pad(torch.stack([fg, v]).to(torch.uint8), (0, pad))
        es = [torch.empty_like(local_e) for _ in range(self.world_size)]
        ms = [torch.empty_like(local_masks) for _ in range(self.world_size)]
        dist.all_gather(es, local_e.detach().contiguous(), group=self.group)
        dist.all_gather(ms, local_masks.contiguous(), group=self.group)
        es[self.rank] = local_e
        masks = torch.cat(ms, dim=2).bool()
        return torch.cat(es, dim=1), masks[0], masks[1]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged; its gradient multiplied by ``scale`` on the way back."""
    return _ScaleGrad.apply(x, scale)
