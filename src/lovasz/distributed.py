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
  pixel or no selected class count nowhere).  A ragged batch (``batch=``, point clouds) is the same: each
  rank's samples are its own (its ids are local), and the mean is over all ranks' samples.

**Gradient convention.**  The value is the same on every rank: the one-process loss of the concatenated
inputs.  Each rank's gradient w.r.t. its own inputs is ``world_size ×`` its slice of the one-process
gradient, so that ``DistributedDataParallel``, which *averages* parameter gradients over ranks, yields
exactly the one-process gradient.  (``reduction="none"`` with ``per_image=True`` returns the local
images' losses, which are not synchronised and not scaled.)

Every rank must call the loss, with the same options, also when its local batch is empty or fully
ignored (an input with ``B = 0`` is accepted with a process group); otherwise the collectives wait.

**Agreement.**  Before its first collective, every call checks that all ranks agree
(:meth:`ProcessSync.agree`): one all-reduce of a few integers (the call's number on this group, whether
the rank's inputs passed their checks, the number of classes, ``bins``, ``classes``, ``ignore_index``,
``per_image``, whether per-sample groups of ``batch=`` apply, the surrogate, the reduction and the
backend asked for), whose maximum and minimum every
rank reads.  Where they differ, every rank raises a ``ValueError`` naming the options that differ,
instead of the collectives pairing buffers of different sizes (gloo aborts the process) or computing
different losses silently.  A rank whose inputs fail their checks (bad labels, NaN scores, a wrong
shape) raises its own error after telling the others, which raise too, so that no rank is left waiting
in a collective; with a process group every value check runs before the first collective.  The call's number
catches a rank that skipped a call (an exception caught around the loss): its next call would otherwise
be paired with the peers' current one; after the error the numbers are aligned again, so the next call
of every rank goes through.

**Copies.**  ``copy.deepcopy`` of a loss module (an EMA model, say) shares its process group with the
original: a group is a handle on the processes, not state to duplicate.  A pickled module is saved
without it (a group cannot be pickled); the unpickled module refuses to run until ``process_group`` is
set again (:class:`lovasz.LovaszSoftmaxLoss` and the other modules), rather than computing a local loss
silently.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ProcessSync"]

_OPTION_SLOTS = 9  # the options a call agrees on (a fixed size, so that every rank's buffer matches)
_CALLS: dict[object, int] = {}  # calls of the loss made on each process group, by this process


def _code(value: object) -> int:
    """A small integer standing for an option's value, equal on every rank for equal values (``hash``
    of a string differs between processes; a CRC does not)."""
    if value is None:
        return -(1 << 50)  # outside the range of the plain integers below
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and -(1 << 40) < value < (1 << 40):
        return value
    return zlib.crc32(repr(value).encode())


class ProcessSync:
    """The collectives that the engine and the reduction need, for one process group.

    Constructing it counts a call of the loss on the group (before the inputs are checked, so that a
    call that fails on one rank still counts there)."""

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "process_group is given but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first, or pass process_group=None for a local loss"
            )
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        key = group if group is not None else dist.group.WORLD
        self._key = key
        self.call = _CALLS.get(key, 0) + 1
        _CALLS[key] = self.call

    @torch.compiler.disable
    def agree(self, options: Mapping[str, object], refused: BaseException | None = None) -> None:
        """Check that every rank is at the same call with the same ``options`` (name → value) and accepted
        its inputs, with one all-reduce of ``2·(2 + 9)`` int64; raise on every rank if not.

        ``refused``: this rank's inputs failed their checks with this exception.  The other ranks are told
        through the same all-reduce (so none waits in a collective for this rank), and every rank raises:
        this one its own error, the others a ``ValueError`` that points to it."""
        if len(options) > _OPTION_SLOTS:
            raise ValueError(f"at most {_OPTION_SLOTS} options can be agreed on, got {len(options)}")
        names = ["call", "refused", *options]
        codes = [] if refused is not None else [_code(v) for v in options.values()]
        codes += [0] * (_OPTION_SLOTS - len(codes))  # one size on every rank, whatever it sends
        local = torch.tensor([self.call, int(refused is not None), *codes], dtype=torch.int64)
        both = torch.cat([local, -local])
        if dist.get_backend(self.group) == "nccl":
            both = both.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        high, low = both.cpu().view(2, -1).tolist()
        low = [-v for v in low]
        if high[0] != low[0]:
            _CALLS[self._key] = high[0]  # the next call of every rank is paired again
            raise ValueError(
                f"lovasz: the ranks of the process group are at different calls of the loss (call {low[0]} to "
                f"{high[0]} on this group): a rank skipped a call, e.g. caught an exception and went on. Every "
                "rank must call the loss once per step; the ranks are aligned again for the next call"
            )
        if refused is not None:
            raise refused
        if high[1]:
            raise ValueError(
                "lovasz: another rank of the process group refused its inputs (its own error says why); the "
                "loss of this call is computed on no rank"
            )
        differ = [i for i in range(2, len(names)) if high[i] != low[i]]  # the padding always agrees
        if differ:
            shown = [f"{names[i]} (here, on rank {self.rank}: {options[names[i]]!r})" for i in differ]
            raise ValueError(
                "lovasz: the ranks of the process group passed different options to the loss: "
                + "; ".join(shown)
                + ". Every rank must call the loss with the same options and the same number of classes"
            )

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
