"""The binned engine in PyTorch: scores → :class:`~.histogram.Histogram` counts → losses and weights.

Two entry points share the binning (:func:`cell_codes`) and the weight tables (:mod:`.histogram`):

* :func:`binned_scores`, the path of ``backend="torch"`` with ``bins=<int>`` (:func:`lovasz.engine.group_losses`):
  one autograd function from the scores ``[B, C, N]`` to the group losses, for every surrogate.  Forward
  builds the errors under ``no_grad`` in the ``[B, C, N]`` layout (no ``[G, P]`` copy), the anchors, each
  element's cell ``(group, bin, is_fg)`` in int32, the per-cell *counts* (int64), the weight table and the
  exact head; the loss is ``Σ_i e_i·w_i`` with the table's weights, plus the head's exact weights.
  Between forward and backward it keeps the scores and labels (the inputs), the ``G × K`` table, the head
  (``G × HEAD``) and the anchors, plus each element's cell within its group as int16 (int32 when
  ``bins > 16383``) when all of it fits in what cross-entropy keeps (one input-sized tensor: float32 scores
  and images of at least ``4·bins`` pixels per image, or any batch loss of that size); otherwise backward
  recomputes the cells from the scores (float16/bfloat16 scores, small images per image), and the graph
  holds the tables only, ``8·bins`` bytes a group.  Backward looks the weights up, recomputes the
  probabilities (one softmax or sigmoid) and applies the surrogate's derivative itself.  A backward that
  records a graph (``create_graph=True``) recomputes the errors with autograd instead, so higher-order
  gradients work.
* :func:`lovasz_binned` / :func:`lovasz_binned_counts`, from a materialized ``[G, P]`` error matrix (the
  errors' own gradient), and the path over several processes (``sync``: anchors by
  :meth:`~lovasz.distributed.ProcessSync.all_max`, the float64 histogram with error sums and the exact
  head's candidates by :meth:`~lovasz.distributed.ProcessSync.sum_histogram`).

Both give the same histogram, table and head as :func:`.histogram.histogram_losses` and
:func:`.histogram.head_weights` (the fused kernels' math), hence the same value bound; the bins are the
bits of :meth:`.histogram.Binning.index`.  Eager on CPU and CUDA the counts come from ``torch.bincount``
and the head's elements are found with ``nonzero``; under ``torch.compile`` (static shapes) the same
quantities come from ``scatter_add_`` and ``topk``, with the same results (``tests/test_binned.py``).
Inputs are never modified.  Float64
inputs are computed in float64 (the bins from their float32 rounding, as everywhere); float16/bfloat16 in
float32; the gradient has the input's dtype.  Speed and memory against cross-entropy:
``benchmarks/bench_fallback.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..surrogates import HINGE, Surrogate
from .histogram import (
    HEAD,
    Binning,
    Histogram,
    cell_codes,
    count_tables,
    head_cut,
    head_weights,
    histogram_losses,
    inverse_top,
)

__all__ = ["binned_histogram", "binned_scores", "cell_codes", "lovasz_binned", "lovasz_binned_counts"]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _eager_kernels(device: torch.device) -> bool:
    """``bincount`` and ``nonzero`` (dynamic shapes): eager, on devices where they are native."""
    return not _compiling() and device.type in ("cpu", "cuda")


def _count_cells(cells: Tensor, size: int) -> Tensor:
    """``[size]`` int64 counts of the flat cells (each ``< size``)."""
    flat = cells.reshape(-1)
    if _eager_kernels(cells.device):
        return torch.bincount(flat, minlength=size)
    ones = torch.ones((), dtype=torch.int64, device=cells.device).expand(flat.shape)
    return torch.zeros(size, dtype=torch.int64, device=cells.device).scatter_add_(0, flat.long(), ones)


# ---------------------------------------------------------------------------------------------------------
# From a materialized error matrix.


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


# ---------------------------------------------------------------------------------------------------------
# From the scores.


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _labels(s: Surrogate, x: Tensor, target: Tensor, ignore_index: int | None):
    """``(index, fg, valid)``: for the class layout ``index`` ``[B, 1, N]`` the label of each pixel (0
    where ignored) and ``fg`` None; for channels ``index`` None and ``fg`` ``[B, C, N]`` bool.  ``valid``
    has the labels' shape, or None without ``ignore_index``."""
    if s.per_class:
        t = target.reshape(x.shape[0], 1, x.shape[2])
        valid = None if ignore_index is None else t != ignore_index
        index = t if valid is None else torch.where(valid, t, 0)
        return index.long(), None, valid
    valid = None if ignore_index is None else target != ignore_index
    fg = target == 1
    return None, fg if valid is None else fg & valid, valid


def _errors(s: Surrogate, x: Tensor, index, fg, valid) -> Tensor:
    """Errors ``[B, C, N]`` (a new tensor, compute dtype), 0 where not valid; the values of
    :func:`lovasz.errors.build_errors`."""
    xs = x.to(_compute_dtype(x))
    if s.per_class:
        e = xs.softmax(dim=1) if s.from_logits else xs.clone()
        e.scatter_(1, index, 1.0 - e.gather(1, index))  # |1 - p| at the label, p elsewhere
    elif s == HINGE:
        e = torch.where(fg, -xs, xs).add_(1.0).clamp_min_(0.0)
    else:
        p = torch.sigmoid(xs) if s.from_logits else xs
        e = torch.where(fg, 1.0 - p, p)
    if valid is not None:
        e.masked_fill_(~valid, 0.0)
    return e


def _errors_graph(s: Surrogate, x: Tensor, index, fg, valid) -> Tensor:
    """:func:`_errors` with autograd (out of place), for a backward that records a graph."""
    xs = x.to(_compute_dtype(x))
    if s.per_class:
        p = xs.softmax(dim=1) if s.from_logits else xs
        fg = index == torch.arange(x.shape[1], device=x.device).view(1, -1, 1)
        if valid is not None:
            fg = fg & valid
        return torch.where(fg, 1.0 - p, p)
    if s == HINGE:
        return torch.relu(1.0 - torch.where(fg, xs, -xs))
    p = torch.sigmoid(xs) if s.from_logits else xs
    return torch.where(fg, 1.0 - p, p)


def _rows(per_image: bool, b: int, c: int, device, sample: Tensor | None = None) -> Tensor:
    """Group of each ``(image, class)`` row ``[B·C]`` (int64): the row itself per image, the class over the
    batch, ``sample[b]·C + c`` for a ragged batch (``sample``: ``[B]`` sample ids)."""
    cls = torch.arange(c, device=device)
    if sample is not None:
        return (sample.unsqueeze(1) * c + cls).reshape(-1)
    if per_image:
        return torch.arange(b * c, device=device)
    return cls.repeat(b)


def _group_sum(v: Tensor, per_image: bool, b: int, c: int, rows: Tensor | None = None, g: int = 0) -> Tensor:
    """``[B·C]`` per-row values summed into groups: ``[B·C]`` per image, ``[C]`` over the batch, ``[g]``
    by ``rows`` (:func:`_rows` of a ragged batch) when given."""
    if rows is not None:
        return v.new_zeros(g).index_add_(0, rows, v)
    return v if per_image else v.view(b, c).sum(0)


def _head_nonzero(mask: Tensor, e: Tensor, cells: Tensor, group_of_row: Tensor, g: int, n: int):
    """Head entries ``(values, fg, position)`` ``[G, HEAD]`` (values -1 and positions -1 where unused) of
    the flat ``[R·N]`` ``mask`` (at most ``HEAD`` per group)."""
    pos = mask.reshape(-1).nonzero().squeeze(1)
    grp = group_of_row[pos // n]
    grp, order = grp.sort(stable=True)
    pos = pos[order]
    counts = torch.bincount(grp, minlength=g)
    start = counts.cumsum(0) - counts
    slot = torch.arange(pos.numel(), device=pos.device) - start[grp]
    values = e.new_full((g, HEAD), -1.0)
    position = torch.full((g, HEAD), -1, dtype=torch.int64, device=e.device)
    head_fg = torch.zeros(g, HEAD, dtype=torch.bool, device=e.device)
    values[grp, slot] = e.reshape(-1)[pos]
    position[grp, slot] = pos
    head_fg[grp, slot] = (cells.reshape(-1)[pos] & 1).bool()  # the cell's lowest bit: foreground
    return values, head_fg, position


def _head_topk(mask: Tensor, e: Tensor, cells: Tensor, per_image: bool, b: int, c: int, n: int):
    """:func:`_head_nonzero` with static shapes (``topk`` per row, then per group over the images)."""
    key = torch.where(mask, e, -1.0).view(b * c, n)
    k = min(HEAD, n)
    values, col = key.topk(k, dim=1)
    pos = torch.arange(b * c, device=e.device).unsqueeze(1) * n + col
    if not per_image:
        values = values.view(b, c, k).transpose(0, 1).reshape(c, b * k)
        pos = pos.view(b, c, k).transpose(0, 1).reshape(c, b * k)
        k = min(HEAD, b * k)
        values, sel = values.topk(k, dim=1)
        pos = pos.gather(1, sel)
    g = values.shape[0]
    values = torch.cat([values, values.new_full((g, HEAD - k), -1.0)], dim=1)
    pos = torch.cat([pos, pos.new_full((g, HEAD - k), -1)], dim=1)
    pos = torch.where(values >= 0, pos, -1)
    head_fg = (cells.reshape(-1).gather(0, pos.clamp_min(0).reshape(-1)).view(g, HEAD) & 1).bool() & (values >= 0)
    return values, head_fg, pos


def _head_ranked(mask: Tensor, e: Tensor, cells: Tensor, group_of_row: Tensor, g: int, n: int):
    """:func:`_head_nonzero` with static shapes for any grouping of the rows (ragged batches under
    ``torch.compile``): the elements sorted by decreasing error, then stably by group; the first ``HEAD``
    of each group that are in the mask fill its row (a slot past the end takes the rest)."""
    key = torch.where(mask.reshape(-1), e.reshape(-1), -1.0)
    grp = group_of_row.unsqueeze(1).expand(-1, n).reshape(-1)
    values, pos = key.sort(descending=True, stable=True)
    grp, by_group = grp[pos].sort(stable=True)
    values, pos = values[by_group], pos[by_group]
    counts = torch.zeros(g, dtype=torch.int64, device=e.device).scatter_add_(0, grp, torch.ones_like(grp))
    rank = torch.arange(grp.numel(), device=e.device) - (counts.cumsum(0) - counts)[grp]
    keep = (rank < HEAD) & (values >= 0)
    slot = torch.where(keep, grp * HEAD + rank, g * HEAD)
    out_values = e.new_full((g * HEAD + 1,), -1.0).scatter(0, slot, torch.where(keep, values, -1.0))
    out_pos = torch.full((g * HEAD + 1,), -1, dtype=torch.int64, device=e.device)
    out_pos = out_pos.scatter(0, slot, torch.where(keep, pos, -1))
    values, position = out_values[:-1].view(g, HEAD), out_pos[:-1].view(g, HEAD)
    head_fg = (cells.reshape(-1).gather(0, position.clamp_min(0).reshape(-1)).view(g, HEAD) & 1).bool() & (values >= 0)
    return values, head_fg, position


def _cells(s: Surrogate, e2: Tensor, inv: Tensor, offsets: Tensor, binning: Binning, index, fg, valid) -> Tensor:
    """The cells ``offsets + 2·bin + is_fg`` (int32 ``[B·C, N]``) of the errors ``e2`` (:func:`cell_codes`,
    then the foreground bit of the valid pixels; a pixel that is not valid has error 0: bin 0, background)."""
    cells = cell_codes(e2, inv, offsets, binning)
    if s.per_class:
        b, n = index.shape[0], index.shape[2]
        bit = torch.ones((), dtype=torch.int32, device=e2.device).expand(index.shape) if valid is None else valid.int()
        cells.view(b, -1, n).scatter_add_(1, index, bit)
    else:
        cells.view(fg.shape).add_(fg)
    return cells


class _BinnedScores(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        target: Tensor,
        s: Surrogate,
        per_image: bool,
        ignore_index,
        binning: Binning,
        sample: Tensor | None,
        num_samples: int,
    ):
        b, c, n = x.shape
        g = num_samples * c if sample is not None else b * c if per_image else c
        rows = None if sample is None else _rows(per_image, b, c, x.device, sample)
        k = binning.num_bins
        dtype = _compute_dtype(x)
        dev = x.device
        index, fg, valid = _labels(s, x, target, ignore_index)
        e = _errors(s, x.detach(), index, fg, valid)
        if n == 0 or b == 0:
            top = torch.zeros(g, dtype=torch.float32, device=dev)
        elif rows is not None:  # errors are >= 0: a maximum from 0 is the group's maximum (0 if empty)
            top = torch.zeros(g, dtype=torch.float32, device=dev)
            top = top.scatter_reduce(0, rows, e.amax(dim=2).flatten().to(torch.float32), "amax")
        else:
            top = (e.amax(dim=2).flatten() if per_image else e.amax(dim=(0, 2))).to(torch.float32)
        group_of_row = rows if rows is not None else _rows(per_image, b, c, dev)
        inv = inverse_top(top)[group_of_row].unsqueeze(1)
        offsets = (2 * k * group_of_row).to(torch.int32).unsqueeze(1)
        e2 = e.view(b * c, n)
        cells = _cells(s, e2, inv, offsets, binning, index, fg, valid)
        # Kept for backward: each element's cell within its group as int16 (int32 when 2·K does not fit), when
        # that code, the table and the head together take at most what cross-entropy keeps (its
        # log-probabilities, one input-sized tensor); otherwise nothing per element (2-byte scores, or small
        # images per image): backward recomputes the cells from the scores and the anchors.
        code = None
        code_dtype = torch.int16 if 2 * k <= torch.iinfo(torch.int16).max else torch.int32
        elements = b * c * n
        kept = elements * code_dtype.itemsize + g * (2 * k * torch.finfo(dtype).bits // 8 + 512)
        if kept <= elements * x.element_size():
            if _compiling():
                code = (cells - offsets).to(code_dtype)
            else:
                code = torch.sub(cells, offsets, out=torch.empty_like(cells, dtype=code_dtype))
        counts = _count_cells(cells, 2 * g * k).view(g, k, 2)
        if valid is not None:  # the pixels that are not valid were counted in bin 0 as background
            invalid = (~valid).sum(dim=-1, dtype=torch.int64)  # [B, 1] or [B, C]
            invalid = invalid.expand(b, c).reshape(-1)
            counts[:, 0, 0] -= _group_sum(invalid, per_image, b, c, rows, g)
        table, n_fg, n_valid, cut = count_tables(counts, dtype)
        # The exact head: the elements in each group's bins from its cut up (at most HEAD of them).
        thresholds = offsets + 2 * cut[group_of_row].to(torch.int32).unsqueeze(1)
        mask = cells >= thresholds
        if valid is not None:
            mask = mask & valid.expand(b, c, n).reshape(b * c, n)
        if _eager_kernels(dev):
            head_values, head_fg, position = _head_nonzero(mask, e, cells, group_of_row, g, n)
        elif rows is not None:
            head_values, head_fg, position = _head_ranked(mask, e, cells, group_of_row, g, n)
        else:
            head_values, head_fg, position = _head_topk(mask.view(b, c, n), e, cells, per_image, b, c, n)
        head_w = head_weights(head_values, head_fg, head_values >= 0, n_fg)
        w = table.reshape(-1).index_select(0, cells.reshape(-1)).view(b * c, n)
        row_losses = w.mul_(e2).sum(dim=1)
        losses = _group_sum(row_losses, per_image, b, c, rows, g).to(torch.float64)
        losses = losses + (head_w * head_values.clamp_min(0).to(torch.float64)).sum(dim=1)
        ctx.save_for_backward(x, target, code, top, table, position, head_w.to(dtype), head_fg, sample)
        ctx.binning = binning
        ctx.config = (s, per_image, ignore_index, k)
        ctx.mark_non_differentiable(n_fg, n_valid)
        return losses.to(dtype), n_fg, n_valid

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _n_fg, _n_valid):  # type: ignore[override]
        x, target, code, top, table, position, head_w, head_fg, sample = ctx.saved_tensors
        s, per_image, ignore_index, k = ctx.config
        b, c, n = x.shape
        g = top.shape[0]
        dtype = _compute_dtype(x)
        gl = grad_loss.to(dtype)
        graph = torch.is_grad_enabled()  # create_graph=True: the errors are differentiated with autograd
        # d loss / d error, signed as d error / d score is (-1 for a foreground element: |1 - p|, 1 - s;
        # +1 for a background one), so that one look-up gives d loss / d (probability or score).
        sign = torch.tensor([1.0, 1.0 if graph else -1.0], dtype=dtype, device=x.device)
        scaled = (table.view(g, k, 2) * sign * gl.view(g, 1, 1)).reshape(-1)
        head = head_w * torch.where(head_fg, sign[1], 1.0) * gl.unsqueeze(1)
        group_of_row = _rows(per_image, b, c, x.device, sample)
        offsets = (2 * k * group_of_row).to(torch.int32).view(b, c, 1)
        idx, fg, valid = _labels(s, x, target, ignore_index)
        if code is not None:
            index = offsets + code.view(b, c, n)  # int32: the cell of every element (foreground bit included)
        else:
            with torch.no_grad():
                e = _errors(s, x.detach(), idx, fg, valid).view(b * c, n)
                inv = inverse_top(top)[group_of_row].unsqueeze(1)
                index = _cells(s, e, inv, offsets.view(b * c, 1), ctx.binning, idx, fg, valid).view(b, c, n)
                del e
        if not _eager_kernels(x.device):
            index = index.long()
        grad = scaled.index_select(0, index.reshape(-1))
        used = position >= 0
        grad = (
            grad.index_put((position[used],), head[used]) if graph else grad.index_put_((position[used],), head[used])
        )
        grad = grad.view(b, c, n)
        if valid is not None:
            grad = grad.masked_fill(~valid, 0.0) if graph else grad.masked_fill_(~valid, 0.0)
        if graph:
            (grad,) = torch.autograd.grad(_errors_graph(s, x, idx, fg, valid), x, grad, create_graph=True)
            return grad, None, None, None, None, None, None, None
        xs = x.detach().to(dtype)
        if s.per_class and s.from_logits:  # softmax: p ⊙ (g − Σ_c p_c g_c), rounded as autograd's softmax does
            grad = torch._softmax_backward_data(grad, xs.softmax(dim=1), 1, dtype)
        elif s == HINGE:
            grad = torch.where(torch.where(fg, xs, -xs) < 1.0, grad, 0.0)  # relu's derivative: 0 where 1 - s·y <= 0
        elif not s.per_class and s.from_logits:
            grad = torch.ops.aten.sigmoid_backward(grad, torch.sigmoid(xs))
        return grad.to(x.dtype), None, None, None, None, None, None, None


def binned_scores(
    s: Surrogate,
    x: Tensor,
    target: Tensor,
    *,
    per_image: bool,
    ignore_index: int | None,
    binning: Binning,
    sample: Tensor | None = None,
    num_samples: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Binned Lovász losses of every group of the scores ``x`` ``[B, C, N]`` (``target``: ``[B, N]`` class ids
    for the class layout, ``[B, C, N]`` 0/1 labels for channels): ``(losses, n_fg, n_valid)``, each
    ``[G]`` (``G = B·C`` per image, ``C`` over the batch, ``num_samples·C`` with ``sample``, the ``[B]``
    sample ids of a ragged batch per image, whose groups are the ``(sample, class)`` pairs)."""
    return _BinnedScores.apply(x, target, s, per_image, ignore_index, binning, sample, num_samples)
