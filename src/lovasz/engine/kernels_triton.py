"""Fused Triton kernels (CUDA) for the binned engine.

The kernel contract of :mod:`.fused` (no capabilities beyond it: :mod:`.registry`). Each program takes a
tile of ``BLOCK_N`` pixels × all classes (softmax) or ``BLOCK`` elements (binary losses) and computes
probabilities and errors in registers. A first kernel finds each group's anchor (its largest error, an
integer ``atomic_max`` on the float's bits); a second recomputes the tile, bins the errors scaled by the
anchors and adds into the global (group, bin) histogram with *integer* atomics: int32 counts and int64
fixed-point sums of ``e/U`` (``· 2^32``). Integer operations are associative, so the histogram — and the
loss — is bitwise deterministic whatever the order of the atomics. Backward recomputes the tile and writes
the gradient w.r.t. the logits in one pass.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the test-suite
checks them without a GPU.
"""

from __future__ import annotations

import torch

from ..surrogates import HINGE, SIGMOID, SOFTMAX, Surrogate
from .histogram import Binning, Histogram, inverse_top
from .result import HeadElements

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where triton is absent
    AVAILABLE = False

NAME = "triton"

if AVAILABLE:
    # Surrogate codes (lovasz.surrogates) as compile-time constants of the kernels.
    _SOFTMAX = tl.constexpr(SOFTMAX.code)
    _SIGMOID = tl.constexpr(SIGMOID.code)
    _HINGE = tl.constexpr(HINGE.code)

    @triton.jit
    def _log_bin(v, lo, per_octave):
        """Log-linear bin of ``v`` in [0, 1/2] (lovasz.engine.histogram.Binning._log_bin)."""
        bits = v.to(tl.int32, bitcast=True)
        octave = (bits >> 23) - 127 - lo
        sub = (((bits & 0x7FFFFF).to(tl.int64) * per_octave) >> 23).to(tl.int32)
        return tl.where(bits < (127 + lo) << 23, 0, 1 + octave * per_octave + sub)

    @triton.jit
    def _bin(e, inv, lo, per_octave, num_bins):
        """Bin of errors scaled by the anchors' inverses: fine near 0 and near the anchor."""
        x = e * inv
        xl = tl.minimum(x, 0.5)
        xd = tl.minimum(tl.maximum(1.0 - x, 0.0), 0.5)
        return tl.where(xl < 0.5, _log_bin(xl, lo, per_octave), num_bins - 1 - _log_bin(xd, lo, per_octave))

    @triton.jit
    def _softmax_tile(x_ptr, t_ptr, b, pid_n, C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N):
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_c = tl.arange(0, BLOCK_C)
        in_tile = (offs_c[:, None] < C) & (offs_n[None, :] < N)
        ptrs = x_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :]
        if CODE == _SOFTMAX:
            x = tl.load(ptrs, mask=in_tile, other=0.0).to(tl.float32)
            x = tl.where(offs_c[:, None] < C, x, -float("inf"))  # padded classes take no probability
            ex = tl.exp(x - tl.max(x, axis=0)[None, :])
            p = ex / tl.sum(ex, axis=0)[None, :]
        else:
            p = tl.load(ptrs, mask=in_tile, other=0.0).to(tl.float32)
        lab = tl.load(t_ptr + b * N + offs_n, mask=offs_n < N, other=-1)
        valid = offs_n < N
        if USE_IGNORE:
            valid = valid & (lab != ignore)
        fg = lab[None, :] == offs_c[:, None]
        e = tl.maximum(tl.where(fg, 1.0 - p, p), 0.0)
        return offs_c, offs_n, in_tile, p, fg, e, in_tile & valid[None, :]

    @triton.jit
    def _softmax_groups(b, offs_c, C, PER_IMAGE, RAGGED, s_ptr):
        if RAGGED:  # a ragged batch: image b's sample (s_ptr: the sample of each image)
            return tl.load(s_ptr + b).to(tl.int32) * C + offs_c
        if PER_IMAGE:
            return b * C + offs_c
        return offs_c

    @triton.jit
    def _softmax_top(
        x_ptr, t_ptr, s_ptr, top_ptr, C, N, ignore,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """Each group's largest error (its anchor), as int32 bits (non-negative floats order as ints)."""
        b = tl.program_id(1)
        offs_c, _offs_n, _in_tile, _p, _fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, tl.program_id(0), C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        tile_max = tl.max(tl.where(use, e, 0.0), axis=1)
        g = _softmax_groups(b, offs_c, C, PER_IMAGE, RAGGED, s_ptr)
        tl.atomic_max(top_ptr + g, tile_max.to(tl.int32, bitcast=True), mask=offs_c < C)

    @triton.jit
    def _softmax_fwd(
        x_ptr, t_ptr, s_ptr, inv_ptr, counts_ptr, sums_ptr, C, N, ignore, lo, per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(1)
        offs_c, _offs_n, _in_tile, _p, fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, tl.program_id(0), C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        g = _softmax_groups(b, offs_c, C, PER_IMAGE, RAGGED, s_ptr)
        inv = tl.load(inv_ptr + g, mask=offs_c < C, other=0.0)[:, None]
        idx = (g[:, None] * num_bins + _bin(e, inv, lo, per_octave, num_bins)) * 2 + fg.to(tl.int32)
        tl.atomic_add(counts_ptr + idx, tl.full(idx.shape, 1, tl.int32), mask=use)
        # Fixed point: e/U in [0, 1] times 2^32 (int64 sums are exact up to 2^31 elements per bin).
        tl.atomic_add(sums_ptr + idx, (tl.minimum(e * inv, 1.0) * 4294967296.0).to(tl.int64), mask=use)

    @triton.jit
    def _softmax_head(
        x_ptr, t_ptr, s_ptr, inv_ptr, cut_ptr, hv_ptr, hf_ptr, hb_ptr, count_ptr, C, N, ignore, H, lo, per_octave,
        num_bins, USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        """The elements of the exact head (bins from ``cut[g]`` up): their errors and foreground flags, each
        into the next free slot of its group (an atomic counter; the order does not matter)."""
        b = tl.program_id(1)
        offs_c, _offs_n, _in_tile, _p, fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, tl.program_id(0), C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        g = _softmax_groups(b, offs_c, C, PER_IMAGE, RAGGED, s_ptr)
        inv = tl.load(inv_ptr + g, mask=offs_c < C, other=0.0)[:, None]
        cut = tl.load(cut_ptr + g, mask=offs_c < C, other=num_bins)[:, None]
        gg = g[:, None] + tl.zeros(e.shape, tl.int32)
        k = _bin(e, inv, lo, per_octave, num_bins)
        _store_head(e, fg, k, gg, use & (k >= cut), hv_ptr, hf_ptr, hb_ptr, count_ptr, H)

    @triton.jit
    def _store_head(e, fg, k, g, in_head, hv_ptr, hf_ptr, hb_ptr, count_ptr, H):
        if tl.max(in_head.to(tl.int32)) > 0:
            slot = tl.atomic_add(count_ptr + g, tl.full(e.shape, 1, tl.int32), mask=in_head)
            keep = in_head & (slot < H)
            tl.store(hv_ptr + g * H + slot, e, mask=keep)
            tl.store(hf_ptr + g * H + slot, fg.to(tl.int8), mask=keep)
            tl.store(hb_ptr + g * H + slot, k, mask=keep)

    @triton.jit
    def _head_weight(w, e, fg, g, in_head, hv_ptr, hf_ptr, hw_ptr, H):
        """``w`` with the exact head's weight for the elements ``in_head``: that of the head entry of the
        group with the same foreground flag and the nearest error (the same error, as forward saw it)."""
        if tl.max(in_head.to(tl.int32)) > 0:
            best_d = tl.full(e.shape, float("inf"), tl.float32)
            best_w = tl.zeros(e.shape, tl.float32)
            for i in range(0, H):
                hv = tl.load(hv_ptr + g * H + i, mask=in_head, other=-1.0)
                hf = tl.load(hf_ptr + g * H + i, mask=in_head, other=0) != 0
                hw = tl.load(hw_ptr + g * H + i, mask=in_head, other=0.0)
                d = tl.abs(hv - e)
                better = in_head & (hf == fg) & (d < best_d)
                best_d = tl.where(better, d, best_d)
                best_w = tl.where(better, hw, best_w)
            w = tl.where(in_head, best_w, w)
        return w

    @triton.jit
    def _softmax_bwd(
        x_ptr, t_ptr, s_ptr, inv_ptr, table_ptr, cut_ptr, hv_ptr, hf_ptr, hw_ptr, grad_ptr, C, N, ignore, H, lo,
        per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(1)
        offs_c, offs_n, in_tile, p, fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, tl.program_id(0), C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        g = _softmax_groups(b, offs_c, C, PER_IMAGE, RAGGED, s_ptr)
        inv = tl.load(inv_ptr + g, mask=offs_c < C, other=0.0)[:, None]
        k = _bin(e, inv, lo, per_octave, num_bins)
        idx = (g[:, None] * num_bins + k) * 2 + fg.to(tl.int32)
        w = tl.load(table_ptr + idx, mask=use, other=0.0)
        cut = tl.load(cut_ptr + g, mask=offs_c < C, other=num_bins)[:, None]
        gg = g[:, None] + tl.zeros(e.shape, tl.int32)
        w = _head_weight(w, e, fg, gg, use & (k >= cut), hv_ptr, hf_ptr, hw_ptr, H)
        gp = tl.where(fg, -w, w)  # d error / d p
        if CODE == _SOFTMAX:
            grad = p * (gp - tl.sum(p * gp, axis=0)[None, :])
        else:
            grad = gp
        tl.store(grad_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], grad, mask=in_tile)

    @triton.jit
    def _binary_tile(x_ptr, t_ptr, s_ptr, pid, C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, RAGGED, BLOCK):
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        inside = offs < total
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        lab = tl.load(t_ptr + offs, mask=inside, other=0)
        use = inside
        if USE_IGNORE:
            use = use & (lab != ignore)
        fg = lab == 1
        row = offs // N
        if RAGGED:  # a ragged batch: the sample of the row's image, then the row's class
            g = tl.load(s_ptr + row // C, mask=inside, other=0).to(tl.int32) * C + row % C
        elif PER_IMAGE:
            g = row
        else:
            g = row % C
        if CODE == _HINGE:
            m = 1.0 - tl.where(fg, x, -x)
            e = tl.maximum(m, 0.0)
            de = tl.where(m > 0, tl.where(fg, -1.0, 1.0), 0.0)
        else:
            if CODE == _SIGMOID:
                pr = tl.sigmoid(x)
                d = pr * (1.0 - pr)
            else:
                pr = x
                d = tl.full(x.shape, 1.0, tl.float32)
            e = tl.maximum(tl.where(fg, 1.0 - pr, pr), 0.0)
            de = tl.where(fg, -d, d)
        return offs, inside, use, fg, g, e, de

    @triton.jit
    def _binary_top(
        x_ptr, t_ptr, s_ptr, top_ptr, C, N, total, ignore,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        _offs, _inside, use, _fg, g, e, _de = _binary_tile(
            x_ptr, t_ptr, s_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, RAGGED, BLOCK
        )
        tl.atomic_max(top_ptr + g, e.to(tl.int32, bitcast=True), mask=use)

    @triton.jit
    def _binary_fwd(
        x_ptr, t_ptr, s_ptr, inv_ptr, counts_ptr, sums_ptr, C, N, total, ignore, lo, per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        _offs, _inside, use, fg, g, e, _de = _binary_tile(
            x_ptr, t_ptr, s_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, RAGGED, BLOCK
        )
        inv = tl.load(inv_ptr + g, mask=use, other=0.0)
        idx = (g * num_bins + _bin(e, inv, lo, per_octave, num_bins)) * 2 + fg.to(tl.int32)
        tl.atomic_add(counts_ptr + idx, tl.full(idx.shape, 1, tl.int32), mask=use)
        tl.atomic_add(sums_ptr + idx, (tl.minimum(e * inv, 1.0) * 4294967296.0).to(tl.int64), mask=use)

    @triton.jit
    def _binary_head(
        x_ptr, t_ptr, s_ptr, inv_ptr, cut_ptr, hv_ptr, hf_ptr, hb_ptr, count_ptr, C, N, total, ignore, H, lo,
        per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        _offs, _inside, use, fg, g, e, _de = _binary_tile(
            x_ptr, t_ptr, s_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, RAGGED, BLOCK
        )
        inv = tl.load(inv_ptr + g, mask=use, other=0.0)
        cut = tl.load(cut_ptr + g, mask=use, other=num_bins)
        k = _bin(e, inv, lo, per_octave, num_bins)
        _store_head(e, fg, k, g, use & (k >= cut), hv_ptr, hf_ptr, hb_ptr, count_ptr, H)

    @triton.jit
    def _binary_bwd(
        x_ptr, t_ptr, s_ptr, inv_ptr, table_ptr, cut_ptr, hv_ptr, hf_ptr, hw_ptr, grad_ptr, C, N, total, ignore, H,
        lo, per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, RAGGED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs, inside, use, fg, g, e, de = _binary_tile(
            x_ptr, t_ptr, s_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, RAGGED, BLOCK
        )
        inv = tl.load(inv_ptr + g, mask=use, other=0.0)
        k = _bin(e, inv, lo, per_octave, num_bins)
        idx = (g * num_bins + k) * 2 + fg.to(tl.int32)
        w = tl.load(table_ptr + idx, mask=use, other=0.0)
        cut = tl.load(cut_ptr + g, mask=use, other=num_bins)
        w = _head_weight(w, e, fg, g, use & (k >= cut), hv_ptr, hf_ptr, hw_ptr, H)
        tl.store(grad_ptr + offs, w * de, mask=inside)


def _tiles(c: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(c)
    return block_c, max(16, min(1024, 4096 // block_c))


_BLOCK = 1024


def _launch(
    name: str, x32, t, surrogate: Surrogate, per_image: bool, ignore_index: int | None, pointers, bin_args, ragged=None
):
    """Launch the softmax or binary variant of kernel ``name`` over the whole input: ``x32``, ``t``, the
    samples of a ragged batch (``ragged``: ``[B + S + 1]`` int64, each image's sample first; ``t`` stands in
    where there is none), then ``pointers``, the sizes and ``ignore``, then ``bin_args`` (``lo,
    per_octave, num_bins``, preceded by the head's capacity for ``head`` and ``bwd``, or none)."""
    bsz, c, n = x32.shape
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    flags = dict(USE_IGNORE=use_ignore, CODE=surrogate.code, PER_IMAGE=per_image, RAGGED=ragged is not None)
    if surrogate.per_class:
        block_c, block_n = _tiles(c)
        grid = (triton.cdiv(n, block_n), bsz)
        sizes = (c, n, ignore)
        flags.update(BLOCK_C=block_c, BLOCK_N=block_n)
        kernel = {"top": _softmax_top, "fwd": _softmax_fwd, "head": _softmax_head, "bwd": _softmax_bwd}[name]
    else:
        grid = (triton.cdiv(x32.numel(), _BLOCK),)
        sizes = (c, n, x32.numel(), ignore)
        flags.update(BLOCK=_BLOCK)
        kernel = {"top": _binary_top, "fwd": _binary_fwd, "head": _binary_head, "bwd": _binary_bwd}[name]
    kernel[grid](x32, t, t if ragged is None else ragged, *pointers, *sizes, *bin_args, **flags)


def _groups(x32: torch.Tensor, per_image: bool, ragged: torch.Tensor | None) -> int:
    """Groups of a call: ``B·C`` per image, ``C`` over the batch, ``S·C`` for a ragged batch."""
    bsz, c, _ = x32.shape
    if ragged is not None:
        return (ragged.numel() - bsz - 1) * c
    return bsz * c if per_image else c


def histogram(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    reduce_top=None,
    ragged: torch.Tensor | None = None,
) -> Histogram:
    """Histogram of ``x32`` (``[B, C, N]`` float32 contiguous) with targets ``t`` (int64), one partial:
    a first kernel finds each group's anchor (``reduce_top`` may replace the anchors, e.g. by their max
    over processes), a second bins and counts.  ``ragged``: the groups of a ragged batch (:func:`_launch`)."""
    groups = _groups(x32, per_image, ragged)
    k = b.num_bins
    top_bits = torch.zeros(groups, dtype=torch.int32, device=x32.device)
    bin_args = (b.lo, b.per_octave, k)
    if x32.numel():
        _launch("top", x32, t, surrogate, per_image, ignore_index, (top_bits,), (), ragged)
    top = top_bits.view(torch.float32)
    if reduce_top is not None:
        top = reduce_top(top)
    counts = torch.zeros(groups * k * 2, dtype=torch.int32, device=x32.device)
    sums = torch.zeros(groups * k * 2, dtype=torch.int64, device=x32.device)
    if x32.numel():
        _launch("fwd", x32, t, surrogate, per_image, ignore_index, (inverse_top(top), counts, sums), bin_args, ragged)
    error_sums = sums.to(torch.float64).view(groups, k * 2) * (top.to(torch.float64) / 4294967296.0)[:, None]
    cells = torch.stack([counts.to(torch.float64), error_sums.flatten()], dim=-1)
    return Histogram(cells.view(1, groups, k, 2, 2), top, b)


def head(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    top: torch.Tensor,
    cut: torch.Tensor,
    capacity: int,
    ragged: torch.Tensor | None = None,
) -> HeadElements:
    """The elements of each group's exact head (bins from ``cut[g]`` up), in no particular order."""
    groups = cut.shape[0]
    values = torch.zeros(groups, capacity, dtype=torch.float32, device=x32.device)
    fg = torch.zeros(groups, capacity, dtype=torch.int8, device=x32.device)
    bins = torch.zeros(groups, capacity, dtype=torch.int32, device=x32.device)
    counts = torch.zeros(groups, dtype=torch.int32, device=x32.device)
    if x32.numel():
        pointers = (inverse_top(top), cut.to(torch.int32).contiguous(), values, fg, bins, counts)
        bin_args = (capacity, b.lo, b.per_octave, b.num_bins)
        _launch("head", x32, t, surrogate, per_image, ignore_index, pointers, bin_args, ragged)
    return HeadElements(values, fg.bool(), bins.long(), counts.clamp(max=capacity).to(torch.int64))


def backward(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    top: torch.Tensor,
    table: torch.Tensor,
    grad: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ragged: torch.Tensor | None = None,
) -> None:
    """Write d loss / d ``x32`` into ``grad`` given the anchors, the scaled weight table ``[G, K, 2]`` and
    the exact head ``(cut [G], values [G, H], fg [G, H], weights [G, H])``, its weights scaled too."""
    cut, values, fg, weights = head
    bin_args = (values.shape[1], b.lo, b.per_octave, b.num_bins)
    if x32.numel():
        pointers = (inverse_top(top), table, cut.to(torch.int32).contiguous(), values.contiguous(),
                    fg.to(torch.int8).contiguous(), weights.contiguous(), grad)  # fmt: skip
        _launch("bwd", x32, t, surrogate, per_image, ignore_index, pointers, bin_args, ragged)
