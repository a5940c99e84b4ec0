"""Fused Triton kernels (CUDA) for the binned engine.

Same contract as :mod:`.kernels_cpu`.  Each program takes a tile of ``BLOCK_N`` pixels × all classes
(softmax) or ``BLOCK`` elements (binary losses), computes probabilities, errors and bins in registers and
adds into the global (group, bin) histogram with *integer* atomics: int32 counts and int64 fixed-point
error sums (``e · 2^(32 - hi)``).  Integer addition is associative, so the histogram — and the loss — is
bitwise deterministic whatever the order of the atomics.  Backward recomputes the tile and writes the
gradient w.r.t. the logits in one pass.

On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the test-suite
checks them without a GPU.
"""

from __future__ import annotations

import torch

from ..surrogates import HINGE, SIGMOID, SOFTMAX, Surrogate
from .histogram import Binning, Histogram

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
    def _bin(e, lo_bits, hi_bits, lo, per_octave, num_bins):
        bits = e.to(tl.int32, bitcast=True)
        octave = (bits >> 23) - 127 - lo
        sub = (((bits & 0x7FFFFF).to(tl.int64) * per_octave) >> 23).to(tl.int32)
        k = 1 + octave * per_octave + sub
        k = tl.where(bits < lo_bits, 0, k)
        return tl.where(bits >= hi_bits, num_bins - 1, k)

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
    def _softmax_cells(e, fg, b, offs_c, C, lo, lo_bits, hi_bits, per_octave, num_bins, PER_IMAGE):
        """Flat (group, bin, is_fg) cell of every element of a softmax tile."""
        k = _bin(e, lo_bits, hi_bits, lo, per_octave, num_bins)
        if PER_IMAGE:
            g = b * C + offs_c
        else:
            g = offs_c
        return (g[:, None] * num_bins + k) * 2 + fg.to(tl.int32)

    @triton.jit
    def _softmax_fwd(
        x_ptr, t_ptr, counts_ptr, sums_ptr, C, N, ignore, lo, lo_bits, hi_bits, per_octave, num_bins, scale,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        b = tl.program_id(1)
        offs_c, _offs_n, _in_tile, _p, fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, pid_n, C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        idx = _softmax_cells(e, fg, b, offs_c, C, lo, lo_bits, hi_bits, per_octave, num_bins, PER_IMAGE)
        tl.atomic_add(counts_ptr + idx, tl.full(idx.shape, 1, tl.int32), mask=use)
        tl.atomic_add(sums_ptr + idx, (e * scale).to(tl.int64), mask=use)

    @triton.jit
    def _softmax_bwd(
        x_ptr, t_ptr, table_ptr, grad_ptr, C, N, ignore, lo, lo_bits, hi_bits, per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        b = tl.program_id(1)
        offs_c, offs_n, in_tile, p, fg, e, use = _softmax_tile(
            x_ptr, t_ptr, b, pid_n, C, N, ignore, USE_IGNORE, CODE, BLOCK_C, BLOCK_N
        )
        idx = _softmax_cells(e, fg, b, offs_c, C, lo, lo_bits, hi_bits, per_octave, num_bins, PER_IMAGE)
        w = tl.load(table_ptr + idx, mask=use, other=0.0)
        gp = tl.where(fg, -w, w)  # d error / d p
        if CODE == _SOFTMAX:
            grad = p * (gp - tl.sum(p * gp, axis=0)[None, :])
        else:
            grad = gp
        tl.store(grad_ptr + b * C * N + offs_c[:, None] * N + offs_n[None, :], grad, mask=in_tile)

    @triton.jit
    def _binary_tile(x_ptr, t_ptr, pid, C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, BLOCK):
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        inside = offs < total
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        lab = tl.load(t_ptr + offs, mask=inside, other=0)
        use = inside
        if USE_IGNORE:
            use = use & (lab != ignore)
        fg = lab == 1
        row = offs // N
        if PER_IMAGE:
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
    def _binary_fwd(
        x_ptr, t_ptr, counts_ptr, sums_ptr, C, N, total, ignore, lo, lo_bits, hi_bits, per_octave, num_bins, scale,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        _offs, _inside, use, fg, g, e, _de = _binary_tile(
            x_ptr, t_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, BLOCK
        )
        idx = (g * num_bins + _bin(e, lo_bits, hi_bits, lo, per_octave, num_bins)) * 2 + fg.to(tl.int32)
        tl.atomic_add(counts_ptr + idx, tl.full(idx.shape, 1, tl.int32), mask=use)
        # Errors above 2^(hi+7) (hinge logits beyond ±32000) saturate in the fixed-point sum (2^39 / scale).
        tl.atomic_add(sums_ptr + idx, (tl.minimum(e, 549755813888.0 / scale) * scale).to(tl.int64), mask=use)

    @triton.jit
    def _binary_bwd(
        x_ptr, t_ptr, table_ptr, grad_ptr, C, N, total, ignore, lo, lo_bits, hi_bits, per_octave, num_bins,
        USE_IGNORE: tl.constexpr, CODE: tl.constexpr, PER_IMAGE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs, inside, use, fg, g, e, de = _binary_tile(
            x_ptr, t_ptr, tl.program_id(0), C, N, total, ignore, USE_IGNORE, CODE, PER_IMAGE, BLOCK
        )
        idx = (g * num_bins + _bin(e, lo_bits, hi_bits, lo, per_octave, num_bins)) * 2 + fg.to(tl.int32)
        w = tl.load(table_ptr + idx, mask=use, other=0.0)
        tl.store(grad_ptr + offs, w * de, mask=inside)


def _common(binning: Binning):
    lo_bits = (127 + binning.lo) << 23
    hi_bits = (127 + binning.hi) << 23
    return binning.lo, lo_bits, hi_bits, binning.per_octave, binning.num_bins


def _scale(binning: Binning) -> float:
    # Fixed point for the error sums: errors up to 2^hi, int64 sums safe up to 2^31 elements per bin.
    return float(2 ** (32 - binning.hi))


def _tiles(c: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(c)
    return block_c, max(16, min(1024, 4096 // block_c))


def histogram(
    x32: torch.Tensor, t: torch.Tensor, surrogate: Surrogate, per_image: bool, ignore_index: int | None, b: Binning
) -> Histogram:
    """Histogram of ``x32`` (``[B, C, N]`` float32 contiguous) with targets ``t`` (int64), one partial."""
    bsz, c, n = x32.shape
    groups = bsz * c if per_image else c
    k = b.num_bins
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    counts = torch.zeros(groups * k * 2, dtype=torch.int32, device=x32.device)
    sums = torch.zeros(groups * k * 2, dtype=torch.int64, device=x32.device)
    scale = _scale(b)
    if surrogate.per_class:
        block_c, block_n = _tiles(c)
        _softmax_fwd[(triton.cdiv(n, block_n), bsz)](
            x32, t, counts, sums, c, n, ignore, *_common(b), scale,
            USE_IGNORE=use_ignore, CODE=surrogate.code, PER_IMAGE=per_image, BLOCK_C=block_c, BLOCK_N=block_n,
        )  # fmt: skip
    else:
        total = x32.numel()
        block = 1024
        _binary_fwd[(triton.cdiv(total, block),)](
            x32, t, counts, sums, c, n, total, ignore, *_common(b), scale,
            USE_IGNORE=use_ignore, CODE=surrogate.code, PER_IMAGE=per_image, BLOCK=block,
        )  # fmt: skip
    cells = torch.stack([counts.to(torch.float64), sums.to(torch.float64) / scale], dim=-1)
    return Histogram(cells.view(1, groups, k, 2, 2), b)


def backward(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    table: torch.Tensor,
    grad: torch.Tensor,
) -> None:
    """Write d loss / d ``x32`` into ``grad`` given the scaled weight table ``[G, K, 2]`` float32."""
    bsz, c, n = x32.shape
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    if surrogate.per_class:
        block_c, block_n = _tiles(c)
        _softmax_bwd[(triton.cdiv(n, block_n), bsz)](
            x32, t, table, grad, c, n, ignore, *_common(b),
            USE_IGNORE=use_ignore, CODE=surrogate.code, PER_IMAGE=per_image, BLOCK_C=block_c, BLOCK_N=block_n,
        )  # fmt: skip
    else:
        total = x32.numel()
        block = 1024
        _binary_bwd[(triton.cdiv(total, block),)](
            x32, t, table, grad, c, n, total, ignore, *_common(b),
            USE_IGNORE=use_ignore, CODE=surrogate.code, PER_IMAGE=per_image, BLOCK=block,
        )  # fmt: skip
