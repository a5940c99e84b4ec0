"""Exact Lovász extension of the Jaccard loss, batched over groups with one sort.

For one group (one class of one image, or one class over the batch) with error vector ``e`` over ``p``
pixels and ground-truth set ``G`` (``n = |G|``), sort ``e`` decreasingly.  Let ``a`` and ``b`` be the numbers
of foreground and background pixels *before* an element in that order.  The increment of the Jaccard loss
``D(M) = |M| / |G ∪ M|`` when the element joins the prefix set is

* foreground element: ``1 / (n + b)``,
* background element: ``(n - a) / ((n + b)(n + b + 1))`` (and ``1`` for the first background element of a
  group with ``n = 0``, ``0`` for the later ones),

and the extension is ``Σ_i e_i · w_i``.  The weights ``w`` are also its (sub)gradient.  Computing the
increments directly, instead of differencing Jaccard values, keeps them accurate in float32.

All groups are evaluated together: the errors form a ``[G, P]`` matrix; pixels that are not valid
(ignored, or padding) get the key ``-1`` so that they sort after every real error (errors are ``>= 0``)
and receive weight 0.  Because valid elements come first, ``b = i - a`` at position ``i``: one cumulative
sum suffices.  Non-negative floats order like their bit patterns read as int32, which sorts faster.  Rows
are processed in blocks of at most ``BLOCK_ELEMENTS`` elements, so the sort's temporaries stay bounded;
only the weights, scattered back to input order, are kept for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_ELEMENTS = 1 << 22


def _sorted_weights(e: Tensor, fg: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Losses ``[g]`` and weights ``[g, p]`` (input order) for one block of rows."""
    if valid is None:
        key = e + 0.0  # also turns -0.0 into +0.0, whose bits would sort as negative
    else:
        key = torch.where(valid, e, -1.0).add_(0.0)
    int_type = torch.int64 if key.dtype == torch.float64 else torch.int32
    sorted_bits, order = torch.sort(key.view(int_type), dim=1, descending=True)
    del key
    sorted_e = sorted_bits.view(e.dtype)
    fg_s = fg.gather(1, order)
    a = torch.cumsum(fg_s, dim=1, dtype=torch.int32)  # foreground up to and including each element
    n = a[:, -1:].to(e.dtype)
    remaining = torch.sub(n, a.to(e.dtype))  # n - a (a inclusive: equals n - a_before for background)
    del a
    position = torch.arange(e.shape[1], device=e.device, dtype=e.dtype)
    union = (remaining + position).add_(fg_s).clamp_min_(1.0)  # n + b_before
    denom = (union + 1.0).mul_(union)
    bg_w = remaining.div_(denom)
    del denom
    w = torch.where(fg_s, union.reciprocal_(), bg_w)
    del union, bg_w
    # A group with no foreground: D jumps from 0 to 1 at its first (valid) element.
    w[:, 0] = torch.where(n[:, 0] == 0, 1.0, w[:, 0])
    if valid is not None:
        w.masked_fill_(sorted_e < 0, 0.0)
    loss = torch.linalg.vecdot(sorted_e, w, dim=1)
    del sorted_e
    weights = torch.empty_like(e).scatter_(1, order, w)
    return loss, weights


class _LovaszExact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, errors: Tensor, fg: Tensor, valid: Tensor | None) -> Tensor:  # type: ignore[override]
        e = errors.detach()
        g, p = e.shape
        rows = max(1, BLOCK_ELEMENTS // max(p, 1))
        if rows >= g:
            loss, weights = _sorted_weights(e, fg, valid)
        else:
            weights = torch.empty_like(e)
            loss = e.new_empty(g)
            for start in range(0, g, rows):
                sl = slice(start, start + rows)
                loss[sl], weights[sl] = _sorted_weights(e[sl], fg[sl], None if valid is None else valid[sl])
        ctx.save_for_backward(weights)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad_loss.unsqueeze(1) * weights, None, None


def lovasz_exact(errors: Tensor, fg: Tensor, valid: Tensor | None = None) -> Tensor:
    """Exact Lovász extension of the Jaccard loss for every row of ``errors``.

    Args:
        errors: ``[G, P]`` non-negative errors, float32 or float64.
        fg: ``[G, P]`` bool, ground-truth membership of each pixel in its group's class (``False`` where
            not valid).
        valid: ``[G, P]`` bool or ``None`` (all valid).

    Returns:
        ``[G]`` losses, differentiable with respect to ``errors``.
    """
    return _LovaszExact.apply(errors, fg, valid)


# ---------------------------------------------------------------------------------------------------------
# Ragged groups: rows segmented by sample.


def _segment_weights(e: Tensor, fg: Tensor, valid: Tensor | None, seg: Tensor, num_segments: int):
    """Losses ``[g, S]``, foreground counts ``[g, S]`` and weights ``[g, p]`` (input order) of rows whose
    columns belong to segments ``seg`` ``[p]`` (the same for every row).

    Each row is sorted by (segment, decreasing error), invalid elements last in their segment: for float32
    errors by one sort of a 64-bit key (the segment above the error's bits, which order as the errors do),
    for float64 by a sort by error and a stable sort by segment.  Each segment is then a contiguous run of
    every row, at the same columns in every row.  The counts before an element are cumulative sums minus
    their value at the segment's start, and its position is its column minus the segment's first column,
    so the weights are :func:`_sorted_weights`' formulas per segment."""
    if valid is None:
        key = e + 0.0
    else:
        key = torch.where(valid, e, -1.0).add_(0.0)
    # One sort for float32 errors, eagerly: the segment in the high 32 bits, the error's rank below.  Under
    # torch.compile: the two sorts, traced before the counts' graph break (with torch 2.13, Inductor's code
    # for the remainder after a break placed before the sorts corrupts the heap; tests/test_ragged.py).
    if key.dtype == torch.float32 and not torch.compiler.is_compiling():
        bits = key.view(torch.int32).to(torch.int64)  # >= 0 for errors (they order as their bits), < 0 for -1
        composite = torch.sub((1 << 31) - 1, bits).add_((seg << 32).unsqueeze(0))  # -1 ranks past every error
        del bits
        order = torch.sort(composite, dim=1).indices
        del composite
        sorted_e = key.gather(1, order)
        seg_row = seg[order[:1]]
    else:  # float64 (bits take 64), and under torch.compile: a sort by error, then a stable sort by segment
        int_type = torch.int64 if key.dtype == torch.float64 else torch.int32
        bits, order = torch.sort(key.view(int_type), dim=1, descending=True)
        seg_sorted, by_seg = torch.sort(seg[order], dim=1, stable=True)
        order = order.gather(1, by_seg)
        sorted_e = bits.gather(1, by_seg).view(e.dtype)
        seg_row = seg_sorted[:1]
        del bits, by_seg, seg_sorted
    del key
    # seg_row [1, p]: every row has the same segment layout, segment s at columns starts[s]..ends[s].
    counts = torch.bincount(seg, minlength=num_segments)
    ends = counts.cumsum(0)
    starts = ends - counts
    fg_s = fg.gather(1, order)
    a_all = torch.cumsum(fg_s, dim=1, dtype=torch.int64)
    a_pad = torch.nn.functional.pad(a_all, (1, 0))
    before = a_pad[:, starts]  # [g, S] foreground before each segment
    n_seg = a_pad[:, ends] - before  # [g, S] foreground of each segment
    n = n_seg[:, seg_row[0]].to(e.dtype)  # [g, p]
    remaining = n - (a_all - before[:, seg_row[0]]).to(e.dtype)  # n - a (a inclusive)
    del a_all, a_pad
    position = (torch.arange(e.shape[1], device=e.device) - starts[seg_row[0]]).to(e.dtype)
    union = (remaining + position).add_(fg_s).clamp_min_(1.0)
    denom = (union + 1.0).mul_(union)
    bg_w = remaining.div_(denom)
    del denom
    w = torch.where(fg_s, union.reciprocal_(), bg_w)
    del union, bg_w
    # A segment with no foreground: D jumps from 0 to 1 at its first (valid) element.
    w = torch.where((position == 0) & (n == 0), 1.0, w)
    w.masked_fill_(sorted_e < 0, 0.0)
    loss = e.new_zeros(e.shape[0], num_segments).index_add_(1, seg_row[0], sorted_e.clamp_min(0.0) * w)
    weights = torch.empty_like(e).scatter_(1, order, w)
    return loss, n_seg, weights


class _LovaszExactSegments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, errors: Tensor, fg: Tensor, valid: Tensor | None, seg: Tensor, num_segments: int):  # type: ignore[override]
        e = errors.detach()
        g, p = e.shape
        rows = max(1, BLOCK_ELEMENTS // max(p, 1))
        loss = e.new_empty(g, num_segments)
        n_fg = torch.empty(g, num_segments, dtype=torch.int64, device=e.device)
        weights = torch.empty_like(e)
        for start in range(0, g, rows):
            sl = slice(start, start + rows)
            loss[sl], n_fg[sl], weights[sl] = _segment_weights(
                e[sl], fg[sl], None if valid is None else valid[sl], seg, num_segments
            )
        ctx.save_for_backward(weights, seg)
        ctx.mark_non_differentiable(n_fg)
        return loss, n_fg

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _n_fg):  # type: ignore[override]
        weights, seg = ctx.saved_tensors
        return grad_loss[:, seg] * weights, None, None, None, None


def lovasz_exact_segments(
    errors: Tensor, fg: Tensor, valid: Tensor | None, segment: Tensor, num_segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact Lovász extension of every (row, segment) pair: the columns of each row are split by
    ``segment`` into ragged groups (the samples of a ragged batch), without padding.

    Args:
        errors, fg, valid: ``[G, P]`` as in :func:`lovasz_exact`.
        segment: ``[P]`` int64 segment of each column, in ``[0, num_segments)``, in any order.
        num_segments: ``S``; a segment without columns has loss 0 and counts 0.

    Returns:
        ``(losses, fg_count, valid_count)``, each ``[G, S]``; the losses differentiable w.r.t. ``errors``.
    """
    losses, n_fg = _LovaszExactSegments.apply(errors, fg, valid, segment, num_segments)
    if valid is None:
        n_valid = torch.bincount(segment, minlength=num_segments).expand(errors.shape[0], num_segments)
    else:
        n_valid = torch.zeros(errors.shape[0], num_segments, dtype=torch.int64, device=errors.device)
        n_valid.index_add_(1, segment, valid.long())
    return losses, n_fg, n_valid
