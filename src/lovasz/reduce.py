"""Reductions: per-group Lovász losses → per-image / per-class / scalar losses.

The rows of the engine's output fold back into ``[B, C]`` (per image) or ``[C]`` (whole batch).  A
boolean ``select`` mask of the same shape says which entries take part (classes present, chosen, or
channels with at least one valid pixel); ``weight`` gives per-class weights.

* per image: each image's loss is ``Σ_c w_c L_bc / Σ_c w_c`` over its selected classes; images with
  nothing selected are skipped (they appear as 0 with ``reduction="none"`` and do not count in the mean).
* whole batch: ``reduction="none"`` gives ``w_c · L_c`` per class (0 for unselected classes, as in
  PyTorch's weighted cross-entropy), ``"sum"`` their sum, ``"mean"`` the sum divided by ``Σ_c w_c`` over
  the selected classes.

Everything stays on the device with no data-dependent control flow: an empty selection gives a loss of
0 whose gradient is zeros, still connected to the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .engine.result import GroupLosses

__all__ = ["reduce_groups", "select_classes"]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    ok = den > 0
    return (num / den.masked_fill(~ok, 1.0)).masked_fill(~ok, 0.0)


def select_classes(result: GroupLosses, classes: str | Sequence[int]) -> Tensor:
    """Which groups take part: ``"present"`` classes (a foreground pixel among the group's valid
    pixels), ``"all"`` classes of groups with a valid pixel, or the listed class ids among those."""
    if classes == "present":
        return result.present
    select = result.has_valid
    if classes != "all":
        num_classes = select.shape[-1]
        chosen = torch.zeros(num_classes, dtype=torch.bool, device=select.device)
        chosen[torch.as_tensor([int(c) for c in classes], device=select.device)] = True
        select = select & chosen
    return select


def _weights(select: Tensor, weight: Tensor | None, dtype) -> Tensor:
    """Per-group weights: 1 (or the class weight) where selected, 0 elsewhere."""
    ws = select.to(dtype)
    return ws if weight is None else ws * weight.to(dtype)


def _per_image(losses: Tensor, ws: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's weighted mean over its selected classes ``[B]``, and how many images count.

    Means are sums of losses times normalized weights (not sums divided afterwards), so that huge hinge
    losses (logits near the float32 limit) average without overflowing."""
    per_image = (_safe_div(ws, ws.sum(dim=1, keepdim=True)) * losses).sum(dim=1)
    return per_image, (ws.sum(dim=1) > 0).sum().to(losses.dtype)


def reduce_groups(losses: Tensor, select: Tensor, weight: Tensor | None, reduction: str, sync=None) -> Tensor:
    """Reduce ``losses`` of shape ``[B, C]`` (per image) or ``[C]`` (batch) as described above.

    With ``sync`` (:class:`lovasz.distributed.ProcessSync`), the result is that of all ranks' images
    together (the batch losses are global already), and its gradient is scaled by the world size
    (:mod:`lovasz.distributed` explains the convention); per-image ``"none"`` stays local."""
    ws = _weights(select, weight, losses.dtype)
    if sync is not None and not (losses.dim() == 2 and reduction == "none"):
        from .distributed import scale_grad

        if losses.dim() == 2:
            per_image, counted = _per_image(losses, ws)
            local = torch.stack([per_image.sum(), counted])
            total = sync.all_sum(local)
            summed = local[0] + (total[0] - local[0].detach())
            out = summed if reduction == "sum" else summed / total[1].clamp_min(1.0)
        else:
            out = reduce_groups(losses, select, weight, reduction)
        return scale_grad(out, float(sync.world_size))
    if losses.dim() == 2:  # per image
        per_image, counted = _per_image(losses, ws)
        if reduction == "none":
            return per_image
        if reduction == "sum":
            return per_image.sum()
        return (per_image / counted.clamp_min(1.0)).sum()
    if reduction == "none":
        return ws * losses
    if reduction == "sum":
        return (ws * losses).sum()
    return (_safe_div(ws, ws.sum()) * losses).sum()
