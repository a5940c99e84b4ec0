"""The binned engine in PyTorch: ``[G, P]`` errors → :class:`~.histogram.Histogram` → losses and weights.

Runs on any device and under ``torch.compile`` (static shapes: no boolean indexing, no bincount).  The
fused kernels (:mod:`.kernels_native`, :mod:`.kernels_triton`) compute the same histogram straight from the
scores, without materializing the errors; :mod:`.histogram` holds the math and the error bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .histogram import HEAD, Binning, Histogram, head_cut, head_weights, histogram_losses, inverse_top

__all__ = ["binned_histogram", "lovasz_binned", "lovasz_binned_counts"]


def binned_histogram(
    errors: Tensor, fg: Tensor, valid: Tensor | None, binning: Binning, sync=None
) -> tuple[Histogram, Tensor]:
    """Histogram of ``[G, P]`` errors, and the flat ``(group, bin, is_fg)`` cell of every element (``2·G·K``
    for elements that are not valid).  With ``sync`` (:class:`lovasz.distributed.ProcessSync`), the
    anchors are those of all ranks' errors together (the histogram is still the local one)."""
    e = errors.detach()
    g = e.shape[0]
    k = binning.num_bins
    if e.shape[1] == 0:
        top = e.new_zeros(g, dtype=torch.float32)
    else:
        top = (e if valid is None else torch.where(valid, e, 0.0)).amax(dim=1).to(torch.float32)
    if sync is not None:
        top = sync.all_max(top)
    group = torch.arange(g, device=e.device).unsqueeze(1)
    cells = (binning.index(e, inverse_top(top).unsqueeze(1)) + k * group) * 2 + fg.long()
    if valid is not None:
        cells = torch.where(valid, cells, 2 * g * k)
    flat = cells.flatten()
    counts = torch.zeros(2 * g * k + 1, dtype=torch.float64, device=e.device)
    counts.scatter_add_(0, flat, torch.ones((), dtype=torch.float64, device=e.device).expand_as(flat))
    sums = torch.zeros(2 * g * k + 1, dtype=torch.float64, device=e.device)
    sums.scatter_add_(0, flat, e.flatten().to(torch.float64))
    hist = Histogram(torch.stack([counts[:-1], sums[:-1]], dim=-1).view(1, g, k, 2, 2), top, binning)
    return hist, cells


def _head(errors: Tensor, cells: Tensor, k: int, cut: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The elements of ``[G, P]`` errors (flat cells ``cells``) in each group's bins from ``cut[g]`` up, at
    most ``HEAD`` of them: ``(values, fg, bins, position)``, each ``[G, HEAD]``, values -1 and positions
    (columns in ``errors``) -1 where unused."""
    g, p = errors.shape
    valid = cells < 2 * g * k
    in_head = valid & ((cells // 2) % k >= cut.unsqueeze(1))
    key = torch.where(in_head, errors.detach(), -1.0)
    h = min(HEAD, p)
    values, position = key.topk(h, dim=1)
    values = torch.cat([values, values.new_full((g, HEAD - h), -1.0)], dim=1)
    position = torch.cat([position, position.new_full((g, HEAD - h), -1)], dim=1)
    position = torch.where(values >= 0, position, -1)
    cell = cells.gather(1, position.clamp_min(0)) if p else position.clamp_min(0)  # unused entries: masked
    return values, (cell % 2 == 1) & (values >= 0), (cell // 2) % k, position


class _LovaszBinned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, errors: Tensor, fg: Tensor, valid: Tensor | None, binning: Binning, sync):  # type: ignore[override]
        hist, cells = binned_histogram(errors, fg, valid, binning, sync)
        k = binning.num_bins
        if sync is None:
            losses, table, n_fg, n_valid, cut = histogram_losses(hist, table_dtype=errors.dtype)
            head_values, head_fg, _, position = _head(errors, cells, k, cut)
        else:  # the local head's candidates travel with the histogram; keep those in the global head's bins
            head_values, head_fg, head_bins, position = _head(errors, cells, k, head_cut(hist))
            total, head_values, head_fg, head_bins = sync.sum_histogram(hist.cells, (head_values, head_fg, head_bins))
            hist = Histogram(total, hist.top, binning)
            losses, table, n_fg, n_valid, cut = histogram_losses(hist, table_dtype=errors.dtype)
            keep = (head_values >= 0) & (head_bins >= cut.unsqueeze(1))
            head_values, head_fg = torch.where(keep, head_values, -1.0).to(errors.dtype), head_fg & keep
            # Local candidates outside the global head keep their table weight.
            position = torch.where(keep[:, sync.rank * HEAD : (sync.rank + 1) * HEAD], position, -1)
        head_w = head_weights(head_values, head_fg, head_values >= 0, n_fg)
        losses = losses + (head_w * head_values.clamp_min(0).to(torch.float64)).sum(dim=1)
        weights = torch.cat([table.flatten(), table.new_zeros(1)])[cells]
        rank = 0 if sync is None else sync.rank
        local_w = head_w[:, rank * HEAD : (rank + 1) * HEAD].to(weights.dtype)
        if weights.shape[1]:  # the table is 0 in the head's bins: adding puts each head weight in place
            weights.scatter_add_(1, position.clamp_min(0), torch.where(position >= 0, local_w, 0.0))
        ctx.save_for_backward(weights)
        ctx.mark_non_differentiable(n_fg, n_valid)
        return losses.to(errors.dtype), n_fg, n_valid

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _n_fg, _n_valid):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad_loss.unsqueeze(1) * weights, None, None, None, None


def lovasz_binned_counts(
    errors: Tensor, fg: Tensor, valid: Tensor | None, binning: Binning, sync=None
) -> tuple[Tensor, Tensor, Tensor]:
    """Losses ``[G]`` and the foreground and valid counts ``[G]`` of the histogram (those of all ranks
    with ``sync``)."""
    return _LovaszBinned.apply(errors, fg, valid, binning, sync)


def lovasz_binned(errors: Tensor, fg: Tensor, valid: Tensor | None, binning: Binning) -> Tensor:
    """Binned Lovász extension for every row of ``errors`` (``[G, P]``, non-negative) → ``[G]``.

    Pure PyTorch; runs on any device.  The fused kernels compute the same histogram without
    materializing the errors.
    """
    return _LovaszBinned.apply(errors, fg, valid, binning, None)[0]
