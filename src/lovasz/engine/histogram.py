"""The binned engine's histogram: quantized errors, counted per (group, bin), turned into Lovász weights.

The binned engine evaluates the Lovász extension in O(p + bins) per group, without a sort.  Every
implementation (PyTorch in :mod:`.binned`, C in :mod:`.kernels_native`, Triton in :mod:`.kernels_triton`)
produces the same :class:`Histogram`; :func:`histogram_losses` alone turns it into losses and the weight
table that backward looks up.

The Jaccard increment of an element depends only on how many foreground (``a``) and background (``b``)
pixels of its group come earlier in the decreasing-error order, and on the group's foreground count ``n``
(:mod:`lovasz.engine.exact`).  Quantize the errors into ordered bins, count foreground and background
pixels per (group, bin), and the counts *above* each bin give ``a`` and ``b`` for all its elements up to
the order inside the bin.

**Ties inside a bin.**  Elements sharing a bin are treated as tied and get the *expected* weight under a
uniformly random order of the bin.  For a bin with ``f`` foreground and ``g`` background elements, below
``A`` foreground and ``B`` background elements of higher bins: the number of background elements before a
given foreground element is uniform on ``{0..g}``, so

    w_fg = 1/(g+1) · Σ_{j=0..g} 1/(n+B+j) = (ψ(n+B+g+1) − ψ(n+B)) / (g+1)        (ψ: digamma)

and since the bin's total increment ``ΔJ = J(A+f, B+g) − J(A, B)`` does not depend on the order,

    w_bg = (ΔJ − f · w_fg) / g,     J(a, b) = 1 − (n − a)/(n + b).

These weights are a convex combination of exact Lovász weight vectors (one per order of each bin), so
they are a valid subgradient of the extension at the quantized errors, and the loss ``Σ_i e_i w_i``
satisfies the bound below.  The small tables are computed in float64.

**Binning, anchored at both ends.**  Each group's errors are divided by its largest error ``U`` (the
*anchor*, :attr:`Histogram.top`), so ``x = e/U`` lies in ``[0, 1]``.  Below ``x = 1/2`` the bins are
log-linear in ``x``: ``per_octave`` (``P``) sub-bins of equal width in every octave ``[2^E, 2^(E+1))``,
``lo <= E < -1``, and one bin for ``x < 2^lo``.  From ``x = 1/2`` up they are the mirror image, log-linear
in the distance to the top, ``d = 1 − x``, with one bin for ``d < 2^lo``.  So the resolution is relative
near zero (where most errors of a trained network lie) *and* near the group's largest errors, where the
exact Lovász weights change fastest: the top-ranked elements, a one-pixel class, near-equal scores at
initialisation, confident false positives next to a missed small object.  The anchor makes the binning
scale-free, so hinge errors (unbounded) are binned like probabilities.  Bins are read from the float32
bits of ``x``: integer arithmetic only.

**The exact head.**  The highest bins of each group holding at most :data:`HEAD` elements in total
(:func:`head_cut`) are not weighted as bins: their elements are ranked by their errors and get their exact
weights (:func:`head_weights`; equal errors share the mean weight of their tie).  See the comment at
:data:`HEAD`.

**Error bound.**  Let ``e'`` be the lower edge of each element's bin (in error units; ``e' = e`` in the
head).  In the lower half
a bin in octave ``E`` is ``2^E/P <= x/P`` wide; in the upper half it is at most ``d/P <= x/P`` wide
(``d <= 1/2 <= x``); the two extreme bins are ``2^lo`` wide, and the top one only holds ``x >= 1 − 2^lo``.
So ``e − e' <= e/P + 2^lo·U`` elementwise (``P >= 2^-lo/2`` never binds at the defaults).  The weights are
a convex combination of exact weight vectors of orders that sort ``e'``, so ``L = Σ w_i e_i`` satisfies
``f(e') <= L <= f(e)`` (the extension ``f`` is the maximum of ``Σ w_i e_i`` over such vectors).  ``f`` is
monotone, positively homogeneous and ``f(c·1) <= c``, hence

    0 <= f(e) − L_binned(e) <= f(e)/P + 2^lo·U

a relative error of at most ``1/P``: 0.93 % at the default ``bins`` (``lo = -24``, ``P = 107``), plus
``U·2^-24`` absolute.

**Why ``lo = -24``.**  ``x`` is a float32, so in ``[1/2, 1)`` it is a multiple of ``2^-24`` and so is ``d``:
with ``lo = -24`` (and ``P >= 8``) every float32 value of ``x`` within ``2^-20`` of the top has a bin of its
own, and near zero the bins reach down as far.  Errors that crowd there (confident false positives next
to a missed small object: a softmax probability within ``1e-6`` of 1, more of them than the exact head
holds) are then ranked by value, as the exact float32 engine ranks them, instead of sharing one averaged
weight (``tests/test_fidelity.py``, the crowded top bin).  The four extra octaves each way cost
``8·P`` bins, which :data:`DEFAULT_BINS` includes to keep ``P = 107``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_BINS",
    "HEAD",
    "Binning",
    "Histogram",
    "cell_codes",
    "count_tables",
    "head_cut",
    "head_weights",
    "histogram_losses",
    "inverse_top",
    "weight_tables",
]

DEFAULT_BINS = 4924  # = 2 + 2·23·107: P = 107 sub-bins per octave with lo = -24

# The exact head.  Where a group's largest errors are few and close together (a small object, a class at
# initialisation, confident false positives), their exact Lovász weights differ a lot from rank to rank
# (for one foreground pixel: 1/2, 1/6, 1/12, ... for the background errors above it), and errors closer
# than a bin's width would get their bin's mean weight.  So the highest bins of each group that hold at
# most ``HEAD`` elements in total are resolved exactly: their elements are ranked by their errors and get
# the exact weights of that order (equal errors: the mean weight of their tie, as in a bin).  The bins
# below keep their weights, which depend only on how many elements lie above them.
HEAD = 32


@dataclass(frozen=True)
class Binning:
    """Quantization of ``x = e/U`` in ``[0, 1]`` into ``num_bins`` ordered bins, fine near 0 and near 1
    (see the module docstring)."""

    lo: int
    per_octave: int

    @classmethod
    def for_bins(cls, bins: int, lo: int = -24) -> Binning:
        """The binning with at most ``bins`` bins."""
        return cls(lo, max(1, (bins - 2) // (2 * (-1 - lo))))

    @property
    def half(self) -> int:
        """Bins in each half (below and above ``x = 1/2``)."""
        return 1 + (-1 - self.lo) * self.per_octave

    @property
    def num_bins(self) -> int:
        return 2 * self.half

    def index(self, errors: Tensor, inv_top: Tensor) -> Tensor:
        """Bin (int64) of every error of a ``[G, P]`` matrix, non-decreasing in the error; ``inv_top``
        (``[G, 1]`` float32) is ``1/U`` of each row (0 where ``U = 0``).  Computed in float32, from the
        bits, exactly as the kernels do (:func:`cell_codes`)."""
        zero = torch.zeros((), dtype=torch.int32, device=errors.device)
        return (cell_codes(errors.detach(), inv_top.to(torch.float32), zero, self) >> 1).to(torch.int64)


def _cells_into(e: Tensor, inv: Tensor, offsets: Tensor, binning: Binning, out: Tensor) -> Tensor:
    """``out`` (int32) = ``offsets + 2·bin`` of every error, ``bin`` = :meth:`Binning.index`
    bit for bit, in 12 whole-tensor operations (for ``v`` = ``x`` below 1/2, else ``1 − x``, with bits
    ``vb``: ``y = ⌊(vb & M)·P / 2^23⌋ + (vb >> 23)·P`` clamped below at ``c = (127 + lo)·P − 1``; the
    lower half's bin is ``y − c``, the upper half's ``K − 1 − (y − c)``).  Eager: in place where it can."""
    p = binning.per_octave
    c = (127 + binning.lo) * p - 1
    x = e * inv if e.dtype == torch.float32 else e.to(torch.float32) * inv
    up = x >= 0.5
    v = torch.rsub(x, 1.0).clamp_(max=x)  # v: x below 1/2, else d = 1 - x (exact there)
    del x
    vb = v.view(torch.int32)  # negative (sign bit) only where x > 1: the top bin, as with d clamped to 0
    y = torch.bitwise_right_shift(vb, 23, out=out)
    vb.bitwise_and_((1 << 23) - 1).mul_(p).bitwise_right_shift_(23)
    torch.add(vb, y, alpha=p, out=y).clamp_min_(c)
    lower = torch.add(offsets - 2 * c, y, alpha=2, out=vb)
    upper = torch.sub(offsets + 2 * (binning.num_bins - 1 + c), y, alpha=2, out=y)
    return torch.where(up, upper, lower, out=out)


def _cells_functional(e: Tensor, inv: Tensor, offsets: Tensor, binning: Binning) -> Tensor:
    """:func:`_cells_into` with functional operations (``torch.compile`` fuses them)."""
    p = binning.per_octave
    c = (127 + binning.lo) * p - 1
    x = e.to(torch.float32) * inv
    vb = torch.minimum(x, 1.0 - x).view(torch.int32)
    if p << 23 >= 1 << 31:
        vb = vb.to(torch.int64)
    y = ((((vb & ((1 << 23) - 1)) * p) >> 23) + (vb >> 23) * p).clamp_min(c)
    k = binning.num_bins
    return torch.where(x >= 0.5, offsets + 2 * (k - 1 + c) - 2 * y, offsets - 2 * c + 2 * y).to(torch.int32)


def cell_codes(errors: Tensor, inv_top: Tensor, offsets: Tensor, binning: Binning) -> Tensor:
    """Cells of ``[R, N]`` errors: ``offsets + 2·bin`` (int32; ``offsets`` ``[R, 1]`` or a scalar, int32;
    ``inv_top`` ``[R, 1]`` float32, the anchors' inverses, :func:`inverse_top`).  The one PyTorch
    definition of the bin (:meth:`Binning.index` reads it), which the C and Triton kernels compute bit for
    bit (``docs/engine.md``, definitions shared bit for bit); in place eagerly, functional under
    ``torch.compile`` and where ``P·2^23`` overflows int32 (``tests/test_torch_binned.py`` checks both)."""
    offsets = offsets.to(torch.int32)
    if torch.compiler.is_compiling() or binning.per_octave << 23 >= 1 << 31:  # int32 would overflow: int64 arithmetic
        return _cells_functional(errors, inv_top, offsets, binning)
    out = torch.empty(errors.shape, dtype=torch.int32, device=errors.device)
    return _cells_into(errors, inv_top, offsets, binning, out)


def inverse_top(top: Tensor) -> Tensor:
    """``1/U`` in float32 for anchors ``U`` (0 where ``U = 0``: every error of that group is 0)."""
    top = top.to(torch.float32)
    return torch.where(top > 0, 1.0 / top.clamp_min(torch.finfo(torch.float32).tiny), 0.0)


def weight_tables(fg_counts: Tensor, bg_counts: Tensor, n: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Expected Lovász weights per (group, bin) for foreground and background elements.

    Args:
        fg_counts, bg_counts: ``[G, K]`` counts, bin ``K - 1`` holding the largest errors.
        n: ``[G]`` foreground count of each whole group, when the bins hold only its largest errors (the
            exact head); by default the sum of ``fg_counts``.

    Returns:
        ``(w_fg, w_bg)``, each ``[G, K]`` float64.
    """
    f = fg_counts.to(torch.float64)
    g = bg_counts.to(torch.float64)
    n = f.sum(dim=1, keepdim=True) if n is None else n.to(torch.float64).view(-1, 1)
    if f.device.type == "cpu" and f.numel() > SPARSE_TABLES and not torch.compiler.is_compiling():
        return _sparse_weights(f, g, n)
    # Counts in strictly higher bins: reverse exclusive cumulative sums.
    above_f = f.flip(1).cumsum(1).flip(1) - f
    above_b = g.flip(1).cumsum(1).flip(1) - g
    return _weights(f, g, n, above_f, above_b)


# Tables with more (group, bin) entries than this are computed on the non-empty bins only, on the CPU (most
# bins of a per-image table are empty); the same formulas on the same numbers, so the same bits.
SPARSE_TABLES = 1 << 16


def _sparse_weights(f: Tensor, g: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`weight_tables` evaluated at the non-empty bins (``[G, K]`` float64 counts, ``n`` ``[G, 1]``)."""
    rows, cols = ((f > 0) | (g > 0)).nonzero(as_tuple=True)  # in (group, bin) order
    fs, gs = f[rows, cols], g[rows, cols]
    groups = f.shape[0]

    def above(v: Tensor) -> Tensor:  # the group's total minus the inclusive prefix: counts in higher bins
        total = torch.zeros(groups, dtype=v.dtype).index_add_(0, rows, v)
        prefix = v.cumsum(0) - (total.cumsum(0) - total)[rows]
        return total[rows] - prefix

    w_fg_s, w_bg_s = _weights_fg_subset(fs, gs, n.view(-1)[rows], above(fs), above(gs))
    w_fg, w_bg = torch.zeros_like(f), torch.zeros_like(g)
    w_fg[rows, cols] = w_fg_s
    w_bg[rows, cols] = w_bg_s
    return w_fg, w_bg


def _weights_fg_subset(f: Tensor, g: Tensor, n: Tensor, above_f: Tensor, above_b: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`_weights` of 1-D bins, with the foreground weight (two digammas) computed only where ``f > 0``
    (elsewhere ``f · w_fg`` is ``+0`` and ``w_fg`` is 0): the same bits."""
    u = n + above_b
    u_safe = u.clamp_min(1.0)
    has_fg = n > 0
    j_before = torch.where(has_fg, 1.0 - (n - above_f) / u_safe, (above_b > 0).to(f.dtype))
    u_after = (u + g).clamp_min(1.0)
    j_after = torch.where(has_fg, 1.0 - (n - above_f - f) / u_after, ((above_b + g) > 0).to(f.dtype))
    delta = j_after - j_before
    sel = (f > 0).nonzero().squeeze(1)
    fs, gs, us = f[sel], g[sel], u_safe[sel]
    w_sel = (torch.digamma(us + gs + 1.0) - torch.digamma(us)) / (gs + 1.0)
    delta[sel] = delta[sel] - fs * w_sel
    w_bg = delta.div_(g.clamp_min(1.0))
    w_bg = torch.where(g > 0, w_bg.clamp_min(0.0), 0.0)
    w_fg = torch.zeros_like(f)
    w_fg[sel] = w_sel
    return w_fg, w_bg


def _weights(f: Tensor, g: Tensor, n: Tensor, above_f: Tensor, above_b: Tensor) -> tuple[Tensor, Tensor]:
    """The weights of bins with counts ``f``, ``g``, below ``above_f``, ``above_b`` elements of higher bins,
    in groups of ``n`` foreground elements (float64, broadcast together)."""
    u = n + above_b  # n + B
    # Foreground: mean of 1/(u + j), j = 0..g.  (u >= 1 wherever f > 0, since then n >= 1.)
    u_safe = u.clamp_min(1.0)
    w_fg = (torch.digamma(u_safe + g + 1.0) - torch.digamma(u_safe)) / (g + 1.0)
    # The bin's total Jaccard increment, J(a, b) = 1 - (n - a)/(n + b) (and 1 for n = 0 once b > 0).
    has_fg = n > 0
    j_before = torch.where(has_fg, 1.0 - (n - above_f) / u_safe, (above_b > 0).to(f.dtype))
    u_after = (u + g).clamp_min(1.0)
    j_after = torch.where(has_fg, 1.0 - (n - above_f - f) / u_after, ((above_b + g) > 0).to(f.dtype))
    delta = j_after - j_before
    w_bg = (delta - f * w_fg) / g.clamp_min(1.0)
    w_fg = torch.where(f > 0, w_fg, 0.0)
    w_bg = torch.where(g > 0, w_bg.clamp_min(0.0), 0.0)
    return w_fg, w_bg


@dataclass(frozen=True)
class Histogram:
    """Per (group, bin) foreground/background counts and error sums: all that the binned loss needs.

    ``cells`` is a ``[S, G, K, 2, 2]`` float64 tensor: ``S`` partial histograms that add up (the CPU kernels
    fill one per fixed chunk of pixels, so that the sum does not depend on the thread count), ``G`` groups,
    ``K = binning.num_bins`` bins in increasing error, then (background, foreground) × (count, error sum).
    Counts are integers, exact in float64 below 2^53.

    ``top`` holds each group's anchor ``U`` (its largest error), by which the errors are scaled before
    they are binned.

    **Additivity.**  With the same anchors, the histogram of a union of pixel sets is the sum of their
    histograms, and the losses and weights depend on the pixels through the histogram only.  This is the
    seam of a loss over several processes: every rank computes the anchors of its local batch, an
    all-reduce (max) of ``top`` gives the global anchors, every rank bins its pixels with them into a
    histogram with the same groups (classes for a batch loss; (image, class) pairs numbered over the
    global batch for a per-image loss), an all-reduce (sum) of :meth:`merged` ``.cells`` gives the
    histogram of the global batch, and :func:`histogram_losses` then gives every rank the same losses and
    weight table; backward needs only the local scores, the anchors and that table.  ``G`` floats and one
    float64 tensor of ``G·K·4`` entries travel, whatever the number of pixels.
    """

    cells: Tensor
    top: Tensor  # [G] float32: each group's anchor U, its largest error (see the module docstring)
    binning: Binning

    def merged(self) -> Histogram:
        """The same histogram with its partials added up (``S = 1``)."""
        if self.cells.shape[0] == 1:
            return self
        return Histogram(self.cells.sum(dim=0, keepdim=True), self.top, self.binning)


def histogram_losses(
    hist: Histogram, table_dtype: torch.dtype = torch.float32, *, tables=None, head: int = HEAD
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Losses and weight table of a histogram: the one place where counts become Lovász weights.

    Returns:
        ``(losses, table, fg_count, valid_count, cut)``: losses ``[G]`` float64,
        ``L_g = Σ_k w_fg[g,k]·S_fg[g,k] + w_bg[g,k]·S_bg[g,k]`` over the bins below the group's exact head
        (the sums ``S`` of the histogram); the weight table ``[G, K, 2]`` in ``table_dtype``, ``[..., 0]``
        background and ``[..., 1]`` foreground (the gradient of the loss w.r.t. an element's error, 0 in
        the head); foreground and valid pixel counts ``[G]`` int64; and ``cut`` ``[G]`` int64, the lowest
        bin of each group's exact head (:func:`head_cut`).  The head's bins still count as "above" for the
        lower bins; :func:`head_weights` gives their elements' exact weights and loss.

    With ``tables``, a kernel module's ``tables(cells, head)`` (kernels with the ``cpu_tables`` capability,
    :func:`.kernels_native.tables`), one pass of theirs computes the same quantities for a CPU histogram and
    a float32 table; otherwise :func:`weight_tables` does, in PyTorch, on the histogram's device.
    """
    if tables is not None and hist.cells.device.type == "cpu" and table_dtype == torch.float32:
        cells = hist.cells.detach().contiguous()
        return tuple(torch.from_numpy(a) for a in tables(cells.numpy(), head))  # type: ignore[return-value]
    acc = hist.cells.sum(dim=0)
    counts, sums = acc[..., 0].round().to(torch.int64), acc[..., 1]
    w_fg, w_bg, cut = _cut_weights(counts, head)
    losses = (w_fg * sums[..., 1] + w_bg * sums[..., 0]).sum(dim=1)
    table = torch.stack([w_bg, w_fg], dim=-1).to(table_dtype)
    return losses, table, counts[..., 1].sum(dim=1), counts.sum(dim=(1, 2)), cut


def _cut_weights(counts: Tensor, head: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(w_fg, w_bg, cut)`` of ``[G, K, 2]`` integer counts: :func:`weight_tables`, 0 from each group's
    cut up (:func:`head_cut`, the same integers from the counts)."""
    w_fg, w_bg = weight_tables(counts[..., 1], counts[..., 0])
    k = counts.shape[1]
    at_or_above = counts.sum(dim=2).flip(1).cumsum(1).flip(1)
    cut = k - (at_or_above <= head).sum(dim=1)
    below = torch.arange(k, device=cut.device) < cut.unsqueeze(1)
    return w_fg * below, w_bg * below, cut


def count_tables(
    counts: Tensor, table_dtype: torch.dtype = torch.float32, head: int = HEAD
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What :func:`histogram_losses` gives from a histogram's counts alone (``[G, K, 2]`` integers,
    ``[..., 0]`` background, ``[..., 1]`` foreground), for a loss evaluated as ``Σ_i e_i·w_i`` over the
    elements themselves: ``(table, fg_count, valid_count, cut)``, the same table, counts and cut."""
    if counts.device.type == "cpu" and counts[..., 0].numel() > SPARSE_TABLES and not torch.compiler.is_compiling():
        return _sparse_count_tables(counts, table_dtype, head)
    w_fg, w_bg, cut = _cut_weights(counts, head)
    table = torch.stack([w_bg, w_fg], dim=-1).to(table_dtype)
    return table, counts[..., 1].sum(dim=1), counts.sum(dim=(1, 2)), cut


def _sparse_count_tables(counts: Tensor, table_dtype: torch.dtype, head: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`count_tables` computed at the non-empty bins only (the same numbers, so the same bits): the
    counts above each bin from prefix sums over the non-empty bins in (group, bin) order, and the cut as one
    past the highest bin with more than ``head`` elements at or above it."""
    g, k, _ = counts.shape
    per_bin = counts.sum(dim=2)
    rows, cols = per_bin.nonzero(as_tuple=True)
    fs, gs = counts[rows, cols, 1].to(torch.float64), counts[rows, cols, 0].to(torch.float64)
    n_fg, n_valid = counts[..., 1].sum(dim=1), per_bin.sum(dim=1)
    total_f, total_b = n_fg.to(torch.float64), (n_valid - n_fg).to(torch.float64)

    def above(v: Tensor, total: Tensor) -> Tensor:  # the group's total minus the inclusive prefix
        return total[rows] - (v.cumsum(0) - (total.cumsum(0) - total)[rows])

    above_f, above_b = above(fs, total_f), above(gs, total_b)
    w_fg, w_bg = _weights_fg_subset(fs, gs, total_f[rows], above_f, above_b)
    crowded = above_f + above_b + fs + gs > head
    highest = torch.full((g,), -1, dtype=torch.int64).scatter_reduce_(0, rows[crowded], cols[crowded], "amax")
    cut = highest + 1
    below = cols < cut[rows]
    table = torch.zeros(g * k, 2, dtype=table_dtype)
    table[rows * k + cols] = torch.stack([w_bg * below, w_fg * below], dim=1).to(table_dtype)
    return table.view(g, k, 2), n_fg, n_valid, cut


def head_cut(hist: Histogram, head: int = HEAD) -> Tensor:
    """``[G]`` int64: the lowest bin of each group's exact head, the highest bins holding at most ``head``
    valid elements in total (``K``, an empty head, when the top bin alone holds more)."""
    acc = hist.cells[0] if hist.cells.shape[0] == 1 else hist.cells.sum(dim=0)
    counts = acc[..., 0, 0] + acc[..., 1, 0]  # [G, K] elements per bin (background + foreground)
    at_or_above = counts.flip(1).cumsum(1).flip(1)
    return hist.binning.num_bins - (at_or_above <= head + 0.5).sum(dim=1)


def head_weights(values: Tensor, fg: Tensor, valid: Tensor, n_fg: Tensor) -> Tensor:
    """Exact Lovász weights ``[G, H]`` float64 of head elements (``values``, ``fg``, ``valid``: ``[G, H]``,
    in any order) that are the largest errors of groups with ``n_fg`` foreground elements: ranked by
    decreasing error, the weight of each element is its Jaccard increment; elements with equal errors get
    the mean weight of their tie (:func:`weight_tables` with each run of equal errors as a bin)."""
    g, h = values.shape
    if h == 0:
        return values.new_zeros(g, 0, dtype=torch.float64)
    key = torch.where(valid, values.to(torch.float64), -1.0)
    key, order = key.sort(dim=1, descending=True, stable=True)
    f = fg.gather(1, order) & (key >= 0)
    b = ~fg.gather(1, order) & (key >= 0)
    new_run = torch.ones_like(key, dtype=torch.bool)
    new_run[:, 1:] = key[:, 1:] != key[:, :-1]
    run = new_run.long().cumsum(1) - 1  # 0: the largest error
    f_runs = torch.zeros_like(key).scatter_add_(1, run, f.to(key.dtype))
    b_runs = torch.zeros_like(key).scatter_add_(1, run, b.to(key.dtype))
    w_fg, w_bg = weight_tables(f_runs.flip(1), b_runs.flip(1), n=n_fg)
    w_fg, w_bg = w_fg.flip(1).gather(1, run), w_bg.flip(1).gather(1, run)
    w_sorted = torch.where(f, w_fg, torch.where(b, w_bg, 0.0))
    return torch.zeros_like(w_sorted).scatter_(1, order, w_sorted)
