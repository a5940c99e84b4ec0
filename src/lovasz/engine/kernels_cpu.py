"""Fused CPU kernels (numba) for the binned engine.

Forward: logits → (softmax | sigmoid | hinge) → error → bin → per (group, bin) foreground/background
counts and error sums.  Backward: the same errors and bins recomputed, the weight looked up in the table
and the softmax (or sigmoid / hinge) derivative applied, writing the gradient w.r.t. the logits in one
pass.  Neither the errors nor any per-element index is materialized; work goes in blocks of ``BLOCK``
pixels whose arithmetic loops vectorize (a float32 ``exp`` of our own, bins from the float's bits).

Determinism: over the batch, work is split into ``NUM_CHUNKS`` fixed pixel ranges, each accumulating into
its own partial table, added in chunk order; per image, each image owns its groups' rows.  The result does
not depend on the number of threads.

Layout: logits ``[B, C, N]`` float32 contiguous, targets ``[B, N]`` (softmax) or ``[B, C, N]`` (binary)
int64.  Groups are ``b * C + c`` per image, ``c`` over the batch.  Accumulators are float64 ``[G, K, 2, 2]``:
(background, foreground) × (count, error sum).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..surrogates import HINGE, SIGMOID, SIGMOID_PROBS, SOFTMAX, Surrogate
from .histogram import Binning, Histogram, inverse_top

try:
    import numba
    from numba import njit

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
BLOCK = 256
# Fast-math without 'arcp' (no approximate reciprocals).  Forward and backward inline the same code for
# the errors and their bins, so they bin every error alike (tests/test_fidelity.py checks it); fused
# multiply-adds may move an error across a bin edge relative to PyTorch's Binning.index by an ulp.
_FASTMATH = {"nnan", "ninf", "nsz", "reassoc", "afn", "contract"}
# Fixed (not the thread count), so that results are the same on every machine.
NUM_CHUNKS = 8

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

    @njit(inline="always")
    def _exp_mantissa(v, scale_bits, j):
        """exp(v) for v <= 0 as (returned mantissa) · (float whose bits go to scale_bits[j]).

        Cephes expf: Cody-Waite reduction and a degree-5 polynomial, written so that loops vectorize."""
        v = max(v, np.float32(-87.0))
        n = np.floor(v * _LOG2E + np.float32(0.5))
        r = v - n * _C1 - n * _C2
        poly = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        scale_bits[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
        return poly * r * r + r + np.float32(1.0)

    @njit(inline="always")
    def _log_bin(bits, lo_bits, lo, per_octave):
        """Log-linear bin of a value in [0, 1/2] given by its float32 bits (see Binning._log_bin)."""
        octave = (bits >> 23) - 127 - lo
        sub = np.int32(np.float64(bits & 0x7FFFFF) * (per_octave / 8388608.0))
        k = 1 + octave * per_octave + sub
        return 0 if bits < lo_bits else k

    @njit(inline="always")
    def _bins(e, inv, xs, kb, width, lo, per_octave, half):
        """Bins of errors ``e[:width]`` scaled by ``inv`` = 1/U: fine near 0 and near the anchor U
        (lovasz.engine.histogram.Binning.index, bit for bit).  ``xs``: [2, BLOCK] float32 scratch."""
        xl = xs[0]
        xd = xs[1]
        for j in range(width):
            x = e[j] * inv
            xl[j] = min(x, np.float32(0.5))
            xd[j] = min(max(np.float32(1.0) - x, np.float32(0.0)), np.float32(0.5))
        lb = xl.view(np.int32)
        db = xd.view(np.int32)
        lo_bits = np.int32((127 + lo) << 23)
        top = 2 * half - 1
        for j in range(width):
            kl = _log_bin(lb[j], lo_bits, lo, per_octave)
            kd = _log_bin(db[j], lo_bits, lo, per_octave)
            kb[j] = kl if xl[j] < np.float32(0.5) else top - kd

    @njit(inline="always")
    def _softmax_block(x, b, i0, width, c_, from_logits, p, pf, pn):
        """p[c, :width] = softmax over c of x[b, :, i0:i0+width] (or a copy, for probabilities)."""
        xb = x[b, :, i0 : i0 + width]
        if not from_logits:
            for c in range(c_):
                for j in range(width):
                    p[c, j] = xb[c, j]
            return
        mx = pf[1]
        for j in range(width):
            mx[j] = xb[0, j]
        for c in range(1, c_):
            for j in range(width):
                mx[j] = max(mx[j], xb[c, j])
        den = pf[2]
        den[:width] = 0.0
        scale_bits = pn[1]
        scale = scale_bits.view(np.float32)
        for c in range(c_):
            pc = p[c]
            xc = xb[c]
            for j in range(width):
                pc[j] = _exp_mantissa(xc[j] - mx[j], scale_bits, j)
            for j in range(width):
                v = pc[j] * scale[j]
                pc[j] = v
                den[j] += v
        for j in range(width):
            den[j] = np.float32(1.0) / den[j]
        for c in range(c_):
            pc = p[c]
            for j in range(width):
                pc[j] *= den[j]

    @njit(inline="always")
    def _span(pos, stop, n_):
        row = pos // n_
        i0 = pos - row * n_
        return row, i0, min(BLOCK, n_ - i0, stop - pos)

    @njit(inline="always")
    def _unit_range(unit, per_image, units_len, nchunks, total):
        if per_image:
            return unit * units_len, (unit + 1) * units_len, np.int64(0)
        step = (total + nchunks - 1) // nchunks
        start = min(unit * step, total)
        return start, min(start + step, total), unit

    @njit(inline="always")
    def _labels(t, b, i0, width, ignore, use_ignore, lab):
        """Labels of one block as int32, with ignored pixels set to -1 (no class, no foreground)."""
        for j in range(width):
            v = t[b, i0 + j]
            lab[j] = -1 if use_ignore and v == ignore else np.int32(v)

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def softmax_errors(x, t, ignore, use_ignore, code, per_image, nchunks, errors, tops, u0, u1):
        """Pass 1, units ``u0..u1``: errors of every (image, class, pixel) into ``errors`` and each
        unit's largest error per group into ``tops[unit]``."""
        b_, c_, n_ = x.shape
        from_logits = code == _SOFTMAX
        p = np.empty((c_, BLOCK), np.float32)
        pf = np.empty((3, BLOCK), np.float32)
        pn = np.empty((3, BLOCK), np.int32)
        lab = pn[2]
        for unit in range(u0, u1):
            start, stop, _slot = _unit_range(np.int64(unit), per_image, n_, nchunks, b_ * n_)
            pos = start
            while pos < stop:
                b, i0, width = _span(pos, stop, n_)
                _softmax_block(x, b, i0, width, c_, from_logits, p, pf, pn)
                _labels(t, b, i0, width, ignore, use_ignore, lab)
                for c in range(c_):
                    g = b * c_ + c if per_image else c
                    pc = p[c]
                    ec = errors[b, c, i0 : i0 + width]
                    m = tops[unit, g]
                    for j in range(width):
                        v = max(np.float32(1.0) - pc[j] if lab[j] == c else pc[j], np.float32(0.0))
                        ec[j] = v
                        m = max(m, v if lab[j] >= 0 else np.float32(0.0))
                    tops[unit, g] = m
                pos += width

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def softmax_histogram(t, ignore, use_ignore, per_image, nchunks, lo, per_octave, half, errors, inv, acc, u0, u1):
        """Pass 2, units ``u0..u1``: bins of the stored errors and the (group, bin) histogram."""
        b_, c_, n_ = errors.shape
        groups = acc.shape[1]
        num_bins = 2 * half
        flat = acc.reshape(-1)
        xs = np.empty((2, BLOCK), np.float32)
        kb = np.empty(BLOCK, np.int32)
        lab = np.empty(BLOCK, np.int32)
        for unit in range(u0, u1):
            start, stop, slot = _unit_range(np.int64(unit), per_image, n_, nchunks, b_ * n_)
            pos = start
            while pos < stop:
                b, i0, width = _span(pos, stop, n_)
                _labels(t, b, i0, width, ignore, use_ignore, lab)
                for c in range(c_):
                    g = b * c_ + c if per_image else c
                    base = (slot * groups + g) * num_bins * 4
                    ec = errors[b, c, i0 : i0 + width]
                    _bins(ec, inv[g], xs, kb, width, lo, per_octave, half)
                    for j in range(width):
                        if lab[j] < 0:
                            continue
                        idx = base + kb[j] * 4 + (2 if lab[j] == c else 0)
                        flat[idx] += 1.0
                        flat[idx + 1] += ec[j]
                pos += width

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def softmax_backward(x, t, ignore, use_ignore, code, per_image, lo, per_octave, half, inv, table, grad, u0, u1):
        """Backward over (image, block) units ``u0..u1``.  ``table``: [G, K, 2] float32 = d loss / d error
        for (group, bin, is_fg), already scaled by grad_output."""
        _, c_, n_ = x.shape
        from_logits = code == _SOFTMAX
        num_bins = 2 * half
        nblocks = (n_ + BLOCK - 1) // BLOCK
        p = np.empty((c_, BLOCK), np.float32)
        gp = np.empty((c_, BLOCK), np.float32)
        pf = np.empty((4, BLOCK), np.float32)
        pn = np.empty((3, BLOCK), np.int32)
        xs = np.empty((2, BLOCK), np.float32)
        for unit_ in range(u0, u1):
            unit = np.int64(unit_)
            b = unit // nblocks
            i0 = (unit - b * nblocks) * BLOCK
            width = min(n_, i0 + BLOCK) - i0
            _softmax_block(x, b, i0, width, c_, from_logits, p, pf, pn)
            e = pf[0]
            dot = pf[3]
            dot[:width] = 0.0
            kb = pn[0]
            lab = pn[2]
            _labels(t, b, i0, width, ignore, use_ignore, lab)
            flat = table.reshape(-1)
            for c in range(c_):
                g = b * c_ + c if per_image else c
                base = g * num_bins * 2
                pc = p[c]
                for j in range(width):
                    e[j] = max(np.float32(1.0) - pc[j] if lab[j] == c else pc[j], np.float32(0.0))
                _bins(e, inv[g], xs, kb, width, lo, per_octave, half)
                gc = gp[c]
                for j in range(width):
                    fg = lab[j] == c
                    w = flat[base + kb[j] * 2 + (1 if fg else 0)]
                    w = -w if fg else w  # d error / d p = -1 (foreground) or +1 (background)
                    w = np.float32(0.0) if lab[j] < 0 else w
                    gc[j] = w
                    dot[j] += pc[j] * w
            for c in range(c_):
                for j in range(width):
                    grad[b, c, i0 + j] = p[c, j] * (gp[c, j] - dot[j]) if from_logits else gp[c, j]

    @njit(inline="always")
    def _binary_block(x, t, b, c, i0, width, code, e, de, fgb, pf, pn):
        """Errors, their derivative w.r.t. the input, and the fg flag for one block of one row."""
        if code == _SIGMOID:
            scale = pn[1].view(np.float32)
            mant = pf[0]
            for j in range(width):
                # sigmoid(s) = 1 / (1 + exp(-s)); exp of a non-positive argument, then invert if needed.
                mant[j] = _exp_mantissa(-abs(x[b, c, i0 + j]), pn[1], j)
            for j in range(width):
                q = mant[j] * scale[j]  # exp(-|s|) in (0, 1]
                s_pos = x[b, c, i0 + j] >= 0
                pr = np.float32(1.0) / (np.float32(1.0) + q) if s_pos else q / (np.float32(1.0) + q)
                fg = t[b, c, i0 + j] == 1
                e[j] = max(np.float32(1.0) - pr if fg else pr, np.float32(0.0))
                d = pr * (np.float32(1.0) - pr)
                de[j] = -d if fg else d
                fgb[j] = 1 if fg else 0
        elif code == _SIGMOID_PROBS:
            for j in range(width):
                pr = x[b, c, i0 + j]
                fg = t[b, c, i0 + j] == 1
                e[j] = max(np.float32(1.0) - pr if fg else pr, np.float32(0.0))
                de[j] = np.float32(-1.0) if fg else np.float32(1.0)
                fgb[j] = 1 if fg else 0
        else:  # hinge: max(1 - s·y, 0)
            for j in range(width):
                fg = t[b, c, i0 + j] == 1
                s = x[b, c, i0 + j]
                m = np.float32(1.0) - (s if fg else -s)
                e[j] = max(m, np.float32(0.0))
                d = np.float32(-1.0) if fg else np.float32(1.0)
                de[j] = d if m > 0 else np.float32(0.0)
                fgb[j] = 1 if fg else 0

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def binary_errors(x, t, ignore, use_ignore, code, per_image, nchunks, errors, tops, u0, u1):
        """Pass 1 of the binary losses (see :func:`softmax_errors`)."""
        b_, c_, n_ = x.shape
        pf = np.empty((3, BLOCK), np.float32)
        pn = np.empty((2, BLOCK), np.int32)
        fgb = np.empty(BLOCK, np.int32)
        for unit in range(u0, u1):
            start, stop, _slot = _unit_range(np.int64(unit), per_image, c_ * n_, nchunks, b_ * c_ * n_)
            pos = start
            while pos < stop:
                row, i0, width = _span(pos, stop, n_)
                b = row // c_
                c = row - b * c_
                g = b * c_ + c if per_image else c
                ec = errors[b, c, i0 : i0 + width]
                _binary_block(x, t, b, c, i0, width, code, ec, pf[2], fgb, pf, pn)
                m = tops[unit, g]
                for j in range(width):
                    ok = not (use_ignore and t[b, c, i0 + j] == ignore)
                    m = max(m, ec[j] if ok else np.float32(0.0))
                tops[unit, g] = m
                pos += width

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def binary_histogram(t, ignore, use_ignore, per_image, nchunks, lo, per_octave, half, errors, inv, acc, u0, u1):
        """Pass 2 of the binary losses (see :func:`softmax_histogram`)."""
        b_, c_, n_ = errors.shape
        groups = acc.shape[1]
        num_bins = 2 * half
        flat = acc.reshape(-1)
        xs = np.empty((2, BLOCK), np.float32)
        kb = np.empty(BLOCK, np.int32)
        for unit in range(u0, u1):
            start, stop, slot = _unit_range(np.int64(unit), per_image, c_ * n_, nchunks, b_ * c_ * n_)
            pos = start
            while pos < stop:
                row, i0, width = _span(pos, stop, n_)
                b = row // c_
                c = row - b * c_
                g = b * c_ + c if per_image else c
                ec = errors[b, c, i0 : i0 + width]
                _bins(ec, inv[g], xs, kb, width, lo, per_octave, half)
                base = (slot * groups + g) * num_bins * 4
                for j in range(width):
                    lab = t[b, c, i0 + j]
                    if use_ignore and lab == ignore:
                        continue
                    idx = base + kb[j] * 4 + (2 if lab == 1 else 0)
                    flat[idx] += 1.0
                    flat[idx + 1] += ec[j]
                pos += width

    @njit(nogil=True, cache=True, fastmath=_FASTMATH)
    def binary_backward(x, t, ignore, use_ignore, code, per_image, lo, per_octave, half, inv, table, grad, u0, u1):
        """Backward over (row, block) units ``u0..u1``."""
        _, c_, n_ = x.shape
        nblocks = (n_ + BLOCK - 1) // BLOCK
        pf = np.empty((3, BLOCK), np.float32)
        pn = np.empty((2, BLOCK), np.int32)
        xs = np.empty((2, BLOCK), np.float32)
        fgb = np.empty(BLOCK, np.int32)
        for unit_ in range(u0, u1):
            unit = np.int64(unit_)
            row = unit // nblocks
            i0 = (unit - row * nblocks) * BLOCK
            width = min(n_, i0 + BLOCK) - i0
            b = row // c_
            c = row - b * c_
            g = b * c_ + c if per_image else c
            e = pf[1]
            de = pf[2]
            kb = pn[0]
            _binary_block(x, t, b, c, i0, width, code, e, de, fgb, pf, pn)
            _bins(e, inv[g], xs, kb, width, lo, per_octave, half)
            for j in range(width):
                w = table[g, kb[j], fgb[j]] * de[j]
                grad[b, c, i0 + j] = np.float32(0.0) if use_ignore and t[b, c, i0 + j] == ignore else w

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

    @njit(nogil=True, cache=True)
    def tables_range(acc, losses, table, n_fg, n_valid, g0, g1):
        """Partial accumulators ``[S, G, K, 2, 2]`` → losses ``[G]``, weight table ``[G, K, 2]`` (float32,
        ``[..., 0]`` background, ``[..., 1]`` foreground), foreground and valid counts ``[G]``.

        Same quantities as :func:`lovasz.engine.binned.weight_tables`, in one pass per group from the top
        bin down: a foreground element of a bin gets ``(H(u+g) - H(u-1)) / (g+1)`` with ``u = n + B``."""
        slots, num_bins = acc.shape[0], acc.shape[2]
        for g_ in range(g0, g1):
            grp = np.int64(g_)
            n = 0
            total = 0
            for k in range(num_bins):
                for s in range(slots):
                    n += np.int64(acc[s, grp, k, 1, 0])
                    total += np.int64(acc[s, grp, k, 0, 0]) + np.int64(acc[s, grp, k, 1, 0])
            n_fg[grp] = n
            n_valid[grp] = total
            above_f = 0
            above_b = 0
            loss = 0.0
            for k in range(num_bins - 1, -1, -1):
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
                table[grp, k, 0] = w_bg
                table[grp, k, 1] = w_fg
                loss += w_fg * sum_f + w_bg * sum_b
                above_f += f
                above_b += gb
            losses[grp] = loss


if AVAILABLE:
    numba.config.CACHE_DIR = _USER_CACHE_DIR

_POOL: ThreadPoolExecutor | None = None
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
    threads (the kernels release the GIL).  Each unit writes its own outputs, so the result does not
    depend on the number of threads."""
    global _POOL
    workers = max(1, min(torch.get_num_threads(), units))
    if workers == 1:
        fn(*args, 0, units)
        return
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lovasz")
    tasks = min(units, 4 * workers)
    bounds = [units * k // tasks for k in range(tasks + 1)]
    futures = [_POOL.submit(fn, *args, bounds[k], bounds[k + 1]) for k in range(tasks) if bounds[k] < bounds[k + 1]]
    for f in futures:
        f.result()


def tables(acc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Partial accumulators ``[S, G, K, 2, 2]`` → losses ``[G]``, weight table ``[G, K, 2]`` (float32,
    ``[..., 0]`` background, ``[..., 1]`` foreground), foreground and valid counts ``[G]``: the quantities
    of :func:`lovasz.engine.histogram.weight_tables`, in one pass per group from the top bin down (a
    foreground element of a bin gets ``(H(u+g) - H(u-1)) / (g+1)`` with ``u = n + B``)."""
    groups, num_bins = acc.shape[1], acc.shape[2]
    losses = np.zeros(groups, np.float64)
    table = np.zeros((groups, num_bins, 2), np.float32)
    n_fg = np.zeros(groups, np.int64)
    n_valid = np.zeros(groups, np.int64)
    with _compiling_message(tables_range):
        _parallel(tables_range, groups, acc, losses, table, n_fg, n_valid)
    return losses, table, n_fg, n_valid


def histogram(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    reduce_top=None,
) -> Histogram:
    """Histogram of ``x32`` (``[B, C, N]`` float32 contiguous) with targets ``t`` (int64), ``NUM_CHUNKS``
    partials over the batch (one per image with ``per_image``).  Pass 1 writes the errors to a scratch
    array (freed on return) and finds each group's anchor; ``reduce_top`` (e.g. a max over processes) may
    replace the anchors before pass 2 bins the errors."""
    x, tt = x32.numpy(), t.numpy()
    bsz, c, _ = x.shape
    groups = bsz * c if per_image else c
    units = bsz if per_image else NUM_CHUNKS
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    errors_fn, histogram_fn = (
        (softmax_errors, softmax_histogram) if surrogate.per_class else (binary_errors, binary_histogram)
    )
    errors = np.empty(x.shape, np.float32)
    tops = np.zeros((units, groups), np.float32)
    acc = np.zeros((1 if per_image else NUM_CHUNKS, groups, b.num_bins, 2, 2), np.float64)
    with _compiling_message(errors_fn, histogram_fn):
        _parallel(errors_fn, units, x, tt, ignore, use_ignore, surrogate.code, per_image, NUM_CHUNKS, errors, tops)
        top = torch.from_numpy(tops.max(axis=0))
        if reduce_top is not None:
            top = reduce_top(top)
        inv = inverse_top(top).numpy()
        _parallel(
            histogram_fn, units, tt, ignore, use_ignore, per_image, NUM_CHUNKS, b.lo, b.per_octave, b.half,
            errors, inv, acc,
        )  # fmt: skip
    return Histogram(torch.from_numpy(acc), top, b)


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
) -> None:
    """Write d loss / d ``x32`` into ``grad`` given the anchors ``top`` ``[G]`` and the weight table
    ``[G, K, 2]`` (float32), already scaled by the gradient of each group's loss."""
    x = x32.numpy()
    bsz, c, n = x.shape
    nblocks = (n + BLOCK - 1) // BLOCK
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    fn, units = (softmax_backward, bsz * nblocks) if surrogate.per_class else (binary_backward, bsz * c * nblocks)
    with _compiling_message(fn):
        _parallel(
            fn, units, x, t.numpy(), ignore, use_ignore, surrogate.code, per_image, b.lo, b.per_octave, b.half,
            inverse_top(top).numpy(), table.numpy(), grad.numpy(),
        )  # fmt: skip
