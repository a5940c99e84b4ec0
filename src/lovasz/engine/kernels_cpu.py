"""Fused CPU kernels (numba) for the binned engine.

Forward, pass 1 (:func:`softmax_errors`, :func:`binary_errors`): logits → (softmax | sigmoid | hinge) →
error, written as *signed error bits* (the float32 error, its sign bit set for a foreground element, a NaN
pattern for an ignored one) into a buffer shaped like the logits, and each group's largest error (its
anchor).  Pass 2 (:func:`group_tables`, one unit per group): the bins of the group's errors and its
(bin) histogram of foreground/background counts and error sums in a buffer that stays in cache, then the
group's loss, weight table and exact head (the highest bins holding at most ``HEAD`` elements, whose
elements are read back and ranked exactly by :func:`lovasz.engine.histogram.head_weights`).  Backward
(:func:`softmax_backward`) reads the kept errors: a probability is ``e`` or ``1 − e``, so no exponential
is recomputed; it looks the weight up in the table (or the head) and applies the softmax derivative,
writing the gradient in one pass.  The binary losses keep nothing and recompute their errors
(:func:`binary_backward`).  Across processes, pass 2 writes the histogram instead
(:func:`histogram_rows`), which is summed over ranks before :func:`tables_range` and :func:`head_rows`.

Work goes in blocks of ``BLOCK`` pixels whose arithmetic loops vectorize: a float32 ``exp`` of our own and
bins from the float's bits, through LLVM bitcasts (:func:`_bits`, :func:`_float`).  The kernels run on
PyTorch's OpenMP threads where they can (:class:`_OpenMP`), else on a thread pool.

Determinism: pass 1 splits the batch into ``NUM_CHUNKS`` fixed pixel ranges (one image each per image),
each with its own anchors, and pass 2 gives each group to one unit that adds its elements in order.  The
result does not depend on the number of threads or on the thread runtime.

Layout: logits ``[B, C, N]`` float32 contiguous, targets ``[B, N]`` (softmax) or ``[B, C, N]`` (binary)
int64.  Groups are ``b * C + c`` per image, ``c`` over the batch.  Histograms are float64 ``[K, 2, 2]``
per group: (background, foreground) × (count, error sum).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

import numpy as np
import torch

from ..surrogates import HINGE, SIGMOID, SIGMOID_PROBS, SOFTMAX, Surrogate
from . import cpu_threads
from .cpu_threads import OpenMP as _OpenMP  # noqa: F401  (kept for tests and benchmarks)
from .histogram import Binning, Histogram, inverse_top

try:
    import numba
    from numba import njit, types
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where numba is absent
    AVAILABLE = False


def cache_dir() -> str:
    """Where the compiled kernels are cached: ``$LOVASZ_CACHE/numba``, by default
    ``$XDG_CACHE_HOME/lovasz/numba`` or ``~/.cache/lovasz/numba`` (never the package's own folder).
    ``NUMBA_CACHE_DIR``, when set, takes precedence, as numba documents."""
    root = os.environ.get("LOVASZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lovasz"
    )
    return os.path.join(root, "numba")


if AVAILABLE:
    # numba picks a function's cache folder when it is decorated: point it at ours for the decorations
    # below only, and leave the user's setting (and other packages' caches) alone.
    _USER_CACHE_DIR = numba.config.CACHE_DIR
    if not _USER_CACHE_DIR:
        numba.config.CACHE_DIR = cache_dir()

# Surrogate codes (lovasz.surrogates), frozen into the kernels as compile-time constants.
_SOFTMAX, _SIGMOID, _SIGMOID_PROBS, _HINGE = SOFTMAX.code, SIGMOID.code, SIGMOID_PROBS.code, HINGE.code
NAME = "numba"
KEEPS_ERRORS = True  # histogram() writes the errors into a caller's buffer; head() (and softmax backward) read it
BLOCK = 256
# Fast-math without 'arcp' (no approximate reciprocals).  Forward and backward inline the same code for
# the errors and their bins, so they bin every error alike (tests/test_fidelity.py checks it); fused
# multiply-adds may move an error across a bin edge relative to PyTorch's Binning.index by an ulp.
_FASTMATH = {"nnan", "ninf", "nsz", "reassoc", "afn", "contract"}
# Fixed (not the thread count), so that results are the same on every machine.
NUM_CHUNKS = 8
if AVAILABLE:
    # Signed error bits (pass 1 -> pass 2 and backward): the sign bit marks a foreground element, and a NaN
    # pattern an ignored one; integer comparisons only, so fast-math cannot touch them.
    _SIGN = np.int32(-2147483648)
    _ABS = np.int32(0x7FFFFFFF)
    _INF_BITS = np.int32(0x7F800000)
    _IGNORED = np.int32(0x7FC00000)

if AVAILABLE:
    _LOG2E = np.float32(1.4426950408889634)
    _C1 = np.float32(0.693359375)
    _C2 = np.float32(-2.12194440e-4)
    _P0 = np.float32(1.9875691500e-4)
    _P1 = np.float32(1.3981999507e-3)
    _P2 = np.float32(8.3334519073e-3)
    _P3 = np.float32(4.1665795894e-2)
    _P4 = np.float32(1.6666665459e-1)
    _P5 = np.float32(5.0000001201e-1)

    @intrinsic
    def _bits(typingctx, x):
        """The bits of a float32 as an int32 (an LLVM bitcast: free, and loops around it vectorize)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.int32))

        return types.int32(types.float32), codegen

    @intrinsic
    def _float(typingctx, x):
        """The float32 whose bits are an int32 (the inverse of :func:`_bits`)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float32))

        return types.float32(types.int32), codegen

    @njit(inline="always")
    def _expf(v):
        """exp(v) for v <= 0: Cephes expf (Cody-Waite reduction, degree-5 polynomial) with the power of two
        built from its bits, so that loops calling it vectorize."""
        v = max(v, np.float32(-87.0))
        n = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - n * _C1 - n * _C2
        poly = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        return (poly * r * r + r + np.float32(1.0)) * _float((np.int32(n) + np.int32(127)) << np.int32(23))

    @njit(inline="always")
    def _log_bin(bits, lo_bits, lo, per_octave):
        """Log-linear bin of a value in [0, 1/2] given by its float32 bits (see Binning._log_bin)."""
        octave = (bits >> 23) - 127 - lo
        sub = (np.int64(bits & 0x7FFFFF) * per_octave) >> 23
        k = 1 + octave * per_octave + sub
        return 0 if bits < lo_bits else k

    @njit(inline="always")
    def _bin(e, inv, lo, per_octave, half):
        """Bin of an error ``e`` scaled by ``inv`` = 1/U: fine near 0 and near the anchor U
        (lovasz.engine.histogram.Binning.index, bit for bit)."""
        x = e * inv
        xl = min(x, np.float32(0.5))
        xd = min(max(np.float32(1.0) - x, np.float32(0.0)), np.float32(0.5))
        lo_bits = np.int32((127 + lo) << 23)
        kl = _log_bin(_bits(xl), lo_bits, lo, per_octave)
        kd = _log_bin(_bits(xd), lo_bits, lo, per_octave)
        return np.int32(kl if x < np.float32(0.5) else 2 * half - 1 - kd)

    @njit(inline="always")
    def _encode(v, fg, valid):
        """Signed error bits: the float32 error ``v``, its sign bit set for a foreground element, and
        :data:`_IGNORED` for an ignored one."""
        return (_bits(v) | (_SIGN if fg else np.int32(0))) if valid else _IGNORED

    @njit(inline="always")
    def _magnitude(s):
        """The error of signed error bits (0 for an ignored element)."""
        a = s & _ABS
        return _float(np.int32(0) if a > _INF_BITS else a)

    @njit(inline="always")
    def _span(pos, stop, n_):
        row = pos // n_
        i0 = pos - row * n_
        return row, i0, min(BLOCK, n_ - i0, stop - pos)

    @njit(inline="always")
    def _unit_range(unit, per_image, units_len, nchunks, total):
        """Positions ``start..stop`` of pass-1 unit ``unit``: an image per image, else a fixed chunk."""
        if per_image:
            return unit * units_len, (unit + 1) * units_len
        step = (total + nchunks - 1) // nchunks
        start = min(unit * step, total)
        return start, min(start + step, total)

    @njit(inline="always")
    def _labels(t, b, i0, width, ignore, use_ignore, lab):
        """Labels of one block as int32, with ignored pixels set to -1 (no class, no foreground)."""
        tb = t[b, i0 : i0 + width]
        for j in range(width):
            v = tb[j]
            lab[j] = -1 if use_ignore and v == ignore else np.int32(v)

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def softmax_errors(x, t, ignore, use_ignore, code, per_image, nchunks, bits, tops, u0, u1):
        """Pass 1, units ``u0..u1``: the signed error bits (:func:`_encode`) of every (image, class, pixel)
        into ``bits``, and each unit's largest error per group into ``tops[unit]``.  Per block of pixels:
        the softmax over classes (every row a 1-D slice, so that the loops vectorize), then the errors."""
        b_, c_, n_ = x.shape
        from_logits = code == _SOFTMAX
        p = np.empty((c_, BLOCK), np.float32)
        mx = np.empty(BLOCK, np.float32)
        inv_den = np.empty(BLOCK, np.float32)
        lab = np.empty(BLOCK, np.int32)
        for unit in range(u0, u1):
            start, stop = _unit_range(np.int64(unit), per_image, n_, nchunks, b_ * n_)
            pos = start
            while pos < stop:
                b, i0, width = _span(pos, stop, n_)
                if from_logits:
                    mx[:width] = x[b, 0, i0 : i0 + width]
                    for c in range(1, c_):
                        xc = x[b, c, i0 : i0 + width]
                        for j in range(width):
                            mx[j] = max(mx[j], xc[j])
                    inv_den[:width] = 0.0
                    for c in range(c_):
                        xc = x[b, c, i0 : i0 + width]
                        pc = p[c]
                        for j in range(width):
                            v = _expf(xc[j] - mx[j])
                            pc[j] = v
                            inv_den[j] += v
                    for j in range(width):
                        inv_den[j] = np.float32(1.0) / inv_den[j]
                _labels(t, b, i0, width, ignore, use_ignore, lab)
                for c in range(c_):
                    g = b * c_ + c if per_image else c
                    pc = p[c]
                    xc = x[b, c, i0 : i0 + width]
                    out = bits[b, c, i0 : i0 + width]
                    m = tops[unit, g]
                    for j in range(width):
                        pr = pc[j] * inv_den[j] if from_logits else xc[j]
                        fg = lab[j] == c
                        v = max(np.float32(1.0) - pr if fg else pr, np.float32(0.0))
                        m = max(m, v if lab[j] >= 0 else np.float32(0.0))
                        out[j] = _encode(v, fg, lab[j] >= 0)
                    tops[unit, g] = m
                pos += width

    @njit(inline="always")
    def _accumulate(bits, c, start, stop, inv_g, lo, per_octave, half, flat, base, kb, block_top):
        """Add the elements ``start..stop`` (positions in the ``B·N`` pixels) of class ``c`` to the
        histogram ``flat[base:]`` (``[K, 2, 2]``: (background, foreground) × (count, error sum)); the
        highest bin of each block of ``BLOCK`` pixels goes to ``block_top`` (for :func:`_gather_head`).
        Returns the range of bins touched, ``(k_lo, k_hi)`` (empty when ``k_lo > k_hi``)."""
        n_ = bits.shape[2]
        k_lo = np.int32(2 * half)
        k_hi = np.int32(-1)
        pos = start
        m = 0
        while pos < stop:
            b, i0, width = _span(pos, stop, n_)
            src = bits[b, c, i0 : i0 + width]
            top = np.int32(-1)
            for j in range(width):
                k = _bin(_magnitude(src[j]), inv_g, lo, per_octave, half)
                kb[j] = k
                k_lo = min(k_lo, k)
                top = max(top, k)
            block_top[m] = top
            m += 1
            k_hi = max(k_hi, top)
            for j in range(width):
                s = src[j]
                if s == _IGNORED:
                    continue
                idx = base + kb[j] * 4 + (2 if s < 0 else 0)
                flat[idx] += 1.0
                flat[idx + 1] += _magnitude(s)
            pos += width
        return k_lo, k_hi

    @njit(inline="always")
    def _gather_head(bits, c, b0, b1, cg, inv_g, lo, per_octave, half, values, fgs, bins, kb, block_top):
        """Errors, foreground flags and bins of the valid elements of class ``c`` in images ``b0..b1`` whose
        bin is at least ``cg`` (the exact head), into ``values``, ``fgs`` and ``bins`` in scan order;
        returns how many.  Blocks whose highest bin (``block_top``, from :func:`_accumulate`) is below
        ``cg`` are skipped."""
        n_ = bits.shape[2]
        cap = values.shape[0]
        m = 0
        if cg >= 2 * half:
            return m
        block = -1
        for b in range(b0, b1):
            for i0 in range(0, n_, BLOCK):
                block += 1
                if block_top[block] < cg:
                    continue
                width = min(BLOCK, n_ - i0)
                src = bits[b, c, i0 : i0 + width]
                top = np.int32(0)
                for j in range(width):
                    k = _bin(_magnitude(src[j]), inv_g, lo, per_octave, half)
                    kb[j] = k
                    top = max(top, k)
                if top < cg:
                    continue
                for j in range(width):
                    if kb[j] >= cg and src[j] != _IGNORED and m < cap:
                        values[m] = _magnitude(src[j])
                        fgs[m] = src[j] < 0
                        bins[m] = kb[j]
                        m += 1
        return m

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def histogram_rows(bits, per_image, lo, per_octave, half, inv, acc, u0, u1):
        """Pass 2 for groups ``u0..u1`` (an (image, class) row per image, a class's ``B·N`` elements over
        the batch): bins of the signed errors ``bits`` ``[B, C, N]`` and each group's histogram
        ``acc[0, g]``, a group at a time, so that its histogram stays in cache."""
        b_, c_, n_ = bits.shape
        num_bins = 2 * half
        flat = acc.reshape(-1)
        kb = np.empty(BLOCK, np.int32)
        block_top = np.empty(b_ * ((n_ + BLOCK - 1) // BLOCK), np.int32)
        for unit_ in range(u0, u1):
            g = np.int64(unit_)
            c = g % c_ if per_image else g
            b0 = g // c_ if per_image else 0
            b1 = b0 + 1 if per_image else b_
            base = g * num_bins * 4
            _accumulate(bits, c, b0 * n_, b1 * n_, inv[g], lo, per_octave, half, flat, base, kb, block_top)

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def group_tables(
        bits, per_image, lo, per_octave, half, inv, head, losses, table, n_fg, n_valid, cut, head_values,
        head_fg, head_counts, u0, u1,
    ):  # fmt: skip
        """Pass 2 and the tables in one, a unit per group (an (image, class) row per image, a class over
        the batch): the group's histogram in a buffer that stays in cache, its losses, weight table, counts
        and exact head (:func:`_group_table`), then its head's elements."""
        b_, c_, n_ = bits.shape
        num_bins = 2 * half
        local = np.zeros((1, 1, num_bins, 2, 2), np.float64)
        flat = local.reshape(-1)
        kb = np.empty(BLOCK, np.int32)
        block_top = np.empty(b_ * ((n_ + BLOCK - 1) // BLOCK), np.int32)
        head_bins = np.empty(head_values.shape[1], np.int32)
        for unit_ in range(u0, u1):
            g = np.int64(unit_)
            c = g % c_ if per_image else g
            b0 = g // c_ if per_image else 0
            b1 = b0 + 1 if per_image else b_
            k_lo, k_hi = _accumulate(bits, c, b0 * n_, b1 * n_, inv[g], lo, per_octave, half, flat, 0, kb, block_top)
            losses[g], n_fg[g], n_valid[g], cut[g] = _group_table(local, 0, head, table[g], k_lo, k_hi)
            local[0, 0, k_lo : k_hi + 1] = 0.0  # only the bins touched: the buffer is zero for the next group
            head_counts[g] = _gather_head(
                bits, c, b0, b1, cut[g], inv[g], lo, per_octave, half, head_values[g], head_fg[g], head_bins, kb,
                block_top,
            )  # fmt: skip

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def head_rows(bits, per_image, cut, inv, lo, per_octave, half, values, fgs, bins, counts, u0, u1):
        """The exact head (:func:`lovasz.engine.histogram.head_cut`) of groups ``u0..u1``: every valid
        element whose bin is at least ``cut[g]``, its error into ``values[g, :]``, its foreground flag into
        ``fgs[g, :]`` and its bin into ``bins[g, :]`` (``counts[g]`` of them), in scan order."""
        b_, c_, n_ = bits.shape
        kb = np.empty(BLOCK, np.int32)
        block_top = np.full(b_ * ((n_ + BLOCK - 1) // BLOCK), 2 * half, np.int32)  # no block skipped
        for unit_ in range(u0, u1):
            g = np.int64(unit_)
            c = g % c_ if per_image else g
            b0 = g // c_ if per_image else 0
            b1 = b0 + 1 if per_image else b_
            counts[g] = _gather_head(
                bits, c, b0, b1, cut[g], inv[g], lo, per_octave, half, values[g], fgs[g], bins[g], kb, block_top
            )

    @njit(inline="always")
    def _head_weight(head_values, head_fg, head_w, g, e, fg):
        """Weight of a head element of group ``g``: that of the head entry with the same foreground flag
        and the nearest error (the same error, as forward stored it; equal errors share their weight)."""
        best = -1
        gap = np.inf
        for i in range(head_values.shape[1]):
            if head_fg[g, i] == fg:
                d = abs(np.float64(head_values[g, i]) - np.float64(e))
                if d < gap:
                    gap = d
                    best = i
        return head_w[g, best] if best >= 0 else np.float32(0.0)

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def softmax_backward(
        bits, code, per_image, lo, per_octave, half, inv, table, cut, head_values, head_fg, head_w, grad, u0, u1
    ):
        """Backward over (image, block) units ``u0..u1`` from the signed errors that forward kept: the
        probabilities are ``e`` (background) or ``1 − e`` (foreground), so no exponential is recomputed.
        ``table``: [G, K, 2] float32 = d loss / d error for (group, bin, is_fg), scaled by grad_output."""
        _, c_, n_ = bits.shape
        from_logits = code == _SOFTMAX
        num_bins = 2 * half
        nblocks = (n_ + BLOCK - 1) // BLOCK
        gp = np.empty((c_, BLOCK), np.float32)
        dot = np.empty(BLOCK, np.float32)
        kb = np.empty(BLOCK, np.int32)
        cell = np.empty(BLOCK, np.int64)
        wv = np.empty(BLOCK, np.float32)
        flat = table.reshape(-1)
        for unit_ in range(u0, u1):
            unit = np.int64(unit_)
            b = unit // nblocks
            i0 = (unit - b * nblocks) * BLOCK
            width = min(n_, i0 + BLOCK) - i0
            dot[:width] = 0.0
            for c in range(c_):
                g = b * c_ + c if per_image else c
                base = g * num_bins * 2
                src = bits[b, c, i0 : i0 + width]
                inv_g = inv[g]
                top = np.int32(0)
                for j in range(width):  # bins and table cells (vectorized)
                    k = _bin(_magnitude(src[j]), inv_g, lo, per_octave, half)
                    kb[j] = k
                    cell[j] = base + k * 2 + (1 if src[j] < 0 else 0)
                    top = max(top, k)
                for j in range(width):  # the lookups alone (a gather, which LLVM leaves scalar here)
                    wv[j] = flat[cell[j]]
                gc = gp[c]
                for j in range(width):  # (vectorized)
                    s = src[j]
                    fg = s < 0
                    e = _magnitude(s)
                    w = -wv[j] if fg else wv[j]  # d error / d p = -1 (foreground) or +1 (background)
                    w = np.float32(0.0) if s == _IGNORED else w
                    gc[j] = w
                    dot[j] += (np.float32(1.0) - e if fg else e) * w
                if top >= cut[g]:  # elements of the exact head (their table entries are 0)
                    for j in range(width):
                        s = src[j]
                        if kb[j] >= cut[g] and s != _IGNORED:
                            fg = s < 0
                            e = _magnitude(s)
                            w = _head_weight(head_values, head_fg, head_w, g, e, fg)
                            w = -w if fg else w
                            gc[j] = w
                            dot[j] += (np.float32(1.0) - e if fg else e) * w
            for c in range(c_):
                gc = gp[c]
                out = grad[b, c, i0 : i0 + width]
                if from_logits:
                    src = bits[b, c, i0 : i0 + width]
                    for j in range(width):
                        e = _magnitude(src[j])
                        out[j] = (np.float32(1.0) - e if src[j] < 0 else e) * (gc[j] - dot[j])
                else:
                    out[:] = gc[:width]

    @njit(inline="always")
    def _binary_error(s, fg, code):
        """Error of one binary score ``s`` and its derivative w.r.t. ``s``."""
        if code == _SIGMOID:
            # sigmoid(s) = 1 / (1 + exp(-s)); exp of a non-positive argument, then invert if needed.
            q = _expf(-abs(s))  # exp(-|s|) in (0, 1]
            pr = np.float32(1.0) / (np.float32(1.0) + q) if s >= 0 else q / (np.float32(1.0) + q)
            d = pr * (np.float32(1.0) - pr)
            return max(np.float32(1.0) - pr if fg else pr, np.float32(0.0)), -d if fg else d
        if code == _SIGMOID_PROBS:
            return max(np.float32(1.0) - s if fg else s, np.float32(0.0)), np.float32(-1.0) if fg else np.float32(1.0)
        m = np.float32(1.0) - (s if fg else -s)  # hinge: max(1 - s·y, 0)
        d = np.float32(-1.0) if fg else np.float32(1.0)
        return max(m, np.float32(0.0)), d if m > 0 else np.float32(0.0)

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def binary_errors(x, t, ignore, use_ignore, code, per_image, nchunks, bits, tops, u0, u1):
        """Pass 1 of the binary losses (see :func:`softmax_errors`)."""
        b_, c_, n_ = x.shape
        for unit in range(u0, u1):
            start, stop = _unit_range(np.int64(unit), per_image, c_ * n_, nchunks, b_ * c_ * n_)
            pos = start
            while pos < stop:
                row, i0, width = _span(pos, stop, n_)
                b = row // c_
                c = row - b * c_
                g = b * c_ + c if per_image else c
                xc = x[b, c, i0 : i0 + width]
                tc = t[b, c, i0 : i0 + width]
                out = bits[b, c, i0 : i0 + width]
                m = tops[unit, g]
                for j in range(width):
                    ok = not (use_ignore and tc[j] == ignore)
                    fg = tc[j] == 1
                    v, _ = _binary_error(xc[j], fg, code)
                    m = max(m, v if ok else np.float32(0.0))
                    out[j] = _encode(v, fg, ok)
                tops[unit, g] = m
                pos += width

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def binary_backward(
        x, t, ignore, use_ignore, code, per_image, lo, per_octave, half, inv, table, cut, head_values, head_fg,
        head_w, grad, u0, u1,
    ):  # fmt: skip
        """Backward over (row, block) units ``u0..u1``, recomputing the errors from the scores."""
        _, c_, n_ = x.shape
        num_bins = 2 * half
        nblocks = (n_ + BLOCK - 1) // BLOCK
        flat = table.reshape(-1)
        for unit_ in range(u0, u1):
            unit = np.int64(unit_)
            row = unit // nblocks
            i0 = (unit - row * nblocks) * BLOCK
            width = min(n_, i0 + BLOCK) - i0
            b = row // c_
            c = row - b * c_
            g = b * c_ + c if per_image else c
            base = g * num_bins * 2
            inv_g = inv[g]
            xc = x[b, c, i0 : i0 + width]
            tc = t[b, c, i0 : i0 + width]
            out = grad[b, c, i0 : i0 + width]
            cg = cut[g]
            for j in range(width):
                fg = tc[j] == 1
                e, de = _binary_error(xc[j], fg, code)
                k = _bin(e, inv_g, lo, per_octave, half)
                w = flat[base + k * 2 + (1 if fg else 0)]
                if k >= cg:  # the exact head
                    w = _head_weight(head_values, head_fg, head_w, g, e, fg)
                out[j] = np.float32(0.0) if use_ignore and tc[j] == ignore else w * de

    _SMALL = 64
    _H_SMALL = np.zeros(_SMALL, np.float64)
    for _m in range(1, _SMALL):
        _H_SMALL[_m] = _H_SMALL[_m - 1] + 1.0 / _m
    _EULER = 0.5772156649015329

    @njit(inline="always")
    def _harmonic(m):
        if m < _SMALL:
            return _H_SMALL[m]
        x = float(m)
        x2 = 1.0 / (x * x)
        return np.log(x) + _EULER + 0.5 / x - x2 * (1.0 / 12.0 - x2 * (1.0 / 120.0 - x2 / 252.0))

    @njit(inline="always")
    def _harmonic_diff(a, b):
        """H_a - H_b for integers a >= b >= 0, accurate in float64 also when both are large."""
        if b < _SMALL:
            return _harmonic(a) - _H_SMALL[b]
        fa, fb = float(a), float(b)
        ia2, ib2 = 1.0 / (fa * fa), 1.0 / (fb * fb)
        return (
            np.log1p((fa - fb) / fb)
            + 0.5 * (1.0 / fa - 1.0 / fb)
            - (ia2 - ib2) / 12.0
            + (ia2 * ia2 - ib2 * ib2) / 120.0
            - (ia2 * ia2 * ia2 - ib2 * ib2 * ib2) / 252.0
        )

    @njit(inline="always")
    def _group_table(acc, grp, head, table_g, k_lo, k_hi):
        """One group's histogram, partials ``acc[:, grp]`` (``[S, G, K, 2, 2]``) → its weight table
        ``table_g`` ``[K, 2]`` (float32, ``[:, 0]`` background, ``[:, 1]`` foreground; left 0 in the exact
        head), and ``(loss without the head, foreground count, valid count, cut)``: ``cut`` is the lowest
        bin of the exact head, the highest bins holding at most ``head`` elements in total
        (:func:`lovasz.engine.histogram.head_cut`).

        Same quantities as :func:`lovasz.engine.histogram.weight_tables`, from the top bin down: a
        foreground element of a bin gets ``(H(u+g) - H(u-1)) / (g+1)`` with ``u = n + B``.  Only bins
        ``k_lo..k_hi`` may be non-empty."""
        slots = acc.shape[0]
        n = 0
        total = 0
        cut = k_hi + 1  # the empty bins above k_hi hold no element: part of the head
        for k in range(k_hi, k_lo - 1, -1):
            for s in range(slots):
                n += np.int64(acc[s, grp, k, 1, 0])
                total += np.int64(acc[s, grp, k, 0, 0]) + np.int64(acc[s, grp, k, 1, 0])
            if total <= head:
                cut = k
        if total <= head:  # the empty bins below k_lo too
            cut = 0
        above_f = 0
        above_b = 0
        loss = 0.0
        for k in range(k_hi, k_lo - 1, -1):
            f = 0
            gb = 0
            sum_f = 0.0
            sum_b = 0.0
            for s in range(slots):
                f += np.int64(acc[s, grp, k, 1, 0])
                gb += np.int64(acc[s, grp, k, 0, 0])
                sum_f += acc[s, grp, k, 1, 1]
                sum_b += acc[s, grp, k, 0, 1]
            if f == 0 and gb == 0:
                continue
            if k >= cut:  # the exact head: counted above the lower bins, weighted elsewhere
                above_f += f
                above_b += gb
                continue
            u = n + above_b
            w_fg = 0.0
            if f > 0:
                w_fg = _harmonic_diff(u + gb, u - 1) / (gb + 1)
            w_bg = 0.0
            if gb > 0:
                if n > 0:
                    j_before = 1.0 - (n - above_f) / u
                    j_after = 1.0 - (n - above_f - f) / (u + gb)
                else:
                    j_before = 1.0 if above_b > 0 else 0.0
                    j_after = 1.0
                w_bg = max((j_after - j_before - f * w_fg) / gb, 0.0)
            table_g[k, 0] = w_bg
            table_g[k, 1] = w_fg
            loss += w_fg * sum_f + w_bg * sum_b
            above_f += f
            above_b += gb
        return loss, n, total, cut

    @njit(nogil=True, cache=True)
    def tables_range(acc, head, losses, table, n_fg, n_valid, cut, g0, g1):
        """Partial accumulators ``[S, G, K, 2, 2]`` → losses ``[G]`` (without the exact head), weight table
        ``[G, K, 2]``, foreground and valid counts and the head's lowest bin ``[G]`` (:func:`_group_table`)."""
        for g_ in range(g0, g1):
            grp = np.int64(g_)
            losses[grp], n_fg[grp], n_valid[grp], cut[grp] = _group_table(
                acc, grp, head, table[grp], 0, acc.shape[2] - 1
            )


if AVAILABLE:
    numba.config.CACHE_DIR = _USER_CACHE_DIR

_ANNOUNCED = threading.Event()


@contextlib.contextmanager
def _compiling_message(*kernels):
    """Say so in one line (stderr, once per process) when compiling kernels takes longer than a second."""
    if _ANNOUNCED.is_set() or all(k.signatures for k in kernels):
        yield
        return

    def announce() -> None:
        if not _ANNOUNCED.is_set():
            _ANNOUNCED.set()
            sys.stderr.write(
                "lovasz: compiling the CPU kernels of the binned engine (numba), once per cache directory; "
                f"cached in {numba.config.CACHE_DIR or cache_dir()}\n"
            )

    timer = threading.Timer(1.0, announce)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _parallel(fn, units: int, *args) -> None:
    """Run ``fn(*args, u0, u1)`` over ``units`` split into contiguous ranges, on ``torch.get_num_threads()``
    threads (the kernels release the GIL): PyTorch's OpenMP threads where possible
    (:class:`.cpu_threads.OpenMP`), else (or with the environment variable ``LOVASZ_THREADS=pool``) a
    thread pool.  Each unit writes its own outputs, so the result does not depend on the number of threads."""
    workers = cpu_threads.workers(units)
    if workers == 1:
        fn(*args, 0, units)
        return
    tasks = min(units, 4 * workers)
    if cpu_threads.use_pool():
        cpu_threads.run_on_pool(functools.partial(fn, *args), units, tasks, workers)
        return
    bounds = [units * k // tasks for k in range(tasks + 1)]
    ranges = [(bounds[k], bounds[k + 1]) for k in range(tasks) if bounds[k] < bounds[k + 1]]
    cpu_threads.openmp().run([functools.partial(fn, *args, u0, u1) for u0, u1 in ranges], workers)


def tables(acc: np.ndarray, head: int) -> tuple[np.ndarray, ...]:
    """Partial accumulators ``[S, G, K, 2, 2]`` → losses ``[G]`` (without the exact head), weight table
    ``[G, K, 2]`` (float32, ``[..., 0]`` background, ``[..., 1]`` foreground, 0 in the head), foreground
    and valid counts ``[G]`` and the head's lowest bin ``cut`` ``[G]``: the quantities of
    :func:`lovasz.engine.histogram.histogram_losses`, in one pass per group from the top bin down."""
    groups, num_bins = acc.shape[1], acc.shape[2]
    losses = np.zeros(groups, np.float64)
    table = np.zeros((groups, num_bins, 2), np.float32)
    n_fg, n_valid, cut = (np.zeros(groups, np.int64) for _ in range(3))
    with _compiling_message(tables_range):
        _parallel(tables_range, groups, acc, head, losses, table, n_fg, n_valid, cut)
    return losses, table, n_fg, n_valid, cut


def saves_errors(surrogate: Surrogate) -> bool:
    """Whether backward reads the errors that forward kept (``errors=`` of :func:`histogram`,
    :func:`head` and :func:`backward`): for the softmax surrogates, so that backward needs no exponential
    (the kept errors are as large as cross-entropy's saved log-probabilities); the binary ones recompute
    from the scores."""
    return surrogate.per_class


def _pass1(x32, t, surrogate, per_image, ignore_index, errors, reduce_top):
    """Pass 1: signed error bits into ``errors`` and the anchors; returns ``(bits, top, inv)``."""
    x, tt = x32.numpy(), t.numpy()
    bsz, c, _ = x.shape
    groups = bsz * c if per_image else c
    units = bsz if per_image else NUM_CHUNKS
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    errors_fn = softmax_errors if surrogate.per_class else binary_errors
    bits = (torch.empty_like(x32) if errors is None else errors).numpy().view(np.int32)
    tops = np.zeros((units, groups), np.float32)
    with _compiling_message(errors_fn):
        _parallel(errors_fn, units, x, tt, ignore, use_ignore, surrogate.code, per_image, NUM_CHUNKS, bits, tops)
    top = torch.from_numpy(tops.max(axis=0))
    if reduce_top is not None:
        top = reduce_top(top)
    return bits, top, inverse_top(top).numpy()


def histogram(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    reduce_top=None,
    errors: torch.Tensor | None = None,
) -> Histogram:
    """Histogram ``[1, G, K, 2, 2]`` of ``x32`` (``[B, C, N]`` float32 contiguous) with targets ``t``
    (int64).  Pass 1 writes every element's signed error bits into ``errors`` (float32, shaped like
    ``x32``; the float32 error, the sign bit set for a foreground element, a NaN pattern for an ignored
    one) and finds each group's anchor; ``reduce_top`` (e.g. a max over processes) may replace the anchors;
    pass 2 bins the errors, one unit per group.  :func:`head` and (for the softmax surrogates)
    :func:`backward` read ``errors`` again."""
    bsz, c, _ = x32.shape
    groups = bsz * c if per_image else c
    bits, top, inv = _pass1(x32, t, surrogate, per_image, ignore_index, errors, reduce_top)
    return Histogram(torch.from_numpy(_pass2(bits, inv, per_image, groups, b)), top, b)


def losses(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    head_size: int,
    errors: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The local loss in one go (no process group): :func:`histogram`, the tables
    (:func:`lovasz.engine.histogram.histogram_losses`) and :func:`head`, one unit per group, whose
    histogram stays in cache and is never materialized (:func:`group_tables`); three kernels in all with
    pass 1 and backward, which is what a first call compiles.  Returns ``(top, losses, table, n_fg,
    n_valid, cut, head_values, head_fg, head_counts)``; ``head_values`` is -1 past each group's head."""
    bsz, c, _ = x32.shape
    groups = bsz * c if per_image else c
    bits, top, inv = _pass1(x32, t, surrogate, per_image, ignore_index, errors, None)
    loss = np.zeros(groups, np.float64)
    table = np.zeros((groups, b.num_bins, 2), np.float32)
    n_fg, n_valid, cut, counts = (np.zeros(groups, np.int64) for _ in range(4))
    values = np.full((groups, head_size), -1.0, np.float32)  # -1 past each group's head (errors are >= 0)
    fg = np.zeros((groups, head_size), np.bool_)
    with _compiling_message(group_tables):
        _parallel(
            group_tables, groups, bits, per_image, b.lo, b.per_octave, b.half, inv, head_size, loss, table, n_fg,
            n_valid, cut, values, fg, counts,
        )  # fmt: skip
    return (top, *(torch.from_numpy(a) for a in (loss, table, n_fg, n_valid, cut, values, fg, counts)))


def _pass2(bits, inv, per_image: bool, groups: int, b: Binning) -> np.ndarray:
    """Pass 2 into the histogram ``[1, G, K, 2, 2]``, a unit per group."""
    acc = np.zeros((1, groups, b.num_bins, 2, 2), np.float64)
    with _compiling_message(histogram_rows):
        _parallel(histogram_rows, groups, bits, per_image, b.lo, b.per_octave, b.half, inv, acc)
    return acc


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
    errors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The elements of each group's exact head (bins from ``cut[g]`` up), read from the ``errors`` that
    :func:`histogram` wrote: ``(values [G, capacity] float32, fg [G, capacity] bool, bins [G, capacity]
    int64, counts [G] int64)``, unused entries 0 / False."""
    if errors is None:
        raise ValueError("the numba kernels read the head from the errors that histogram(errors=...) wrote")
    bits = errors.numpy().view(np.int32)
    groups = cut.shape[0]
    values = np.zeros((groups, capacity), np.float32)
    fgs = np.zeros((groups, capacity), np.bool_)
    bins = np.zeros((groups, capacity), np.int32)
    counts = np.zeros(groups, np.int64)
    with _compiling_message(head_rows):
        _parallel(
            head_rows, groups, bits, per_image, cut.numpy(), inverse_top(top).numpy(), b.lo, b.per_octave, b.half,
            values, fgs, bins, counts,
        )  # fmt: skip
    return torch.from_numpy(values), torch.from_numpy(fgs), torch.from_numpy(bins).long(), torch.from_numpy(counts)


def backward(
    x32: torch.Tensor | None,
    t: torch.Tensor | None,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    top: torch.Tensor,
    table: torch.Tensor,
    grad: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    errors: torch.Tensor | None = None,
) -> None:
    """Write d loss / d ``x32`` into ``grad`` given the anchors ``top`` ``[G]``, the weight table
    ``[G, K, 2]`` (float32) and the exact head ``(cut [G], values [G, H], fg [G, H], weights [G, H])``, the
    weights already scaled by the gradient of each group's loss.  The softmax surrogates read the signed
    ``errors`` that :func:`histogram` kept (``x32`` and ``t`` are then unused); the binary ones recompute
    from ``x32`` and ``t``."""
    bsz, c, n = grad.shape
    if grad.numel() == 0:
        return
    nblocks = (n + BLOCK - 1) // BLOCK
    inv = inverse_top(top).numpy()
    cut, head_values, head_fg, head_w = (h.contiguous().numpy() for h in head)
    if surrogate.per_class:
        if errors is None:
            raise ValueError("the numba softmax backward needs the errors kept by histogram(errors=...)")
        bits = errors.numpy().view(np.int32)
        with _compiling_message(softmax_backward):
            _parallel(
                softmax_backward, bsz * nblocks, bits, surrogate.code, per_image, b.lo, b.per_octave, b.half,
                inv, table.numpy(), cut, head_values, head_fg, head_w, grad.numpy(),
            )  # fmt: skip
        return
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    with _compiling_message(binary_backward):
        _parallel(
            binary_backward, bsz * c * nblocks, x32.numpy(), t.numpy(), ignore, use_ignore, surrogate.code,
            per_image, b.lo, b.per_octave, b.half, inv, table.numpy(), cut, head_values, head_fg, head_w,
            grad.numpy(),
        )  # fmt: skip
