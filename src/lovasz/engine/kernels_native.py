"""Fused CPU kernels compiled ahead of time (C, ``_native.c``, built when the package is installed): the
``"native"`` backend.

Forward, pass 1 (``softmax_errors``, ``binary_errors``): scores → (softmax | sigmoid | hinge) → error,
written as *signed error bits* (the float32 error, its sign bit set for a foreground element, a NaN
pattern for an ignored one) into a buffer shaped like the scores, and each group's largest error (its
anchor); pass 1 also flags NaN/Inf scores and bad labels.  Pass 2 (``group_tables``, one unit per group):
the bins of the group's errors and its histogram of foreground/background counts and error sums in a
buffer that stays in cache, then the group's loss, weight table and exact head (the highest bins holding
at most ``HEAD`` elements, ranked exactly as :func:`lovasz.engine.histogram.head_weights` does).
Backward reads the kept errors (``softmax_backward_kept``: a probability is ``e`` or ``1 − e``, so no
exponential is recomputed) or recomputes them from the scores (``softmax_backward``,
``binary_backward``), looks the weight up in the table (or the head) and writes the gradient in one pass.
Across processes, pass 2 writes the histogram instead (``send_rows``), summed over ranks before
``global_tables``; the generic path of :mod:`.fused` uses ``histogram_rows``, ``head_rows`` and
``tables_range``.

The library is compiled by ``pip install`` with the system's C compiler, so the first call compiles
nothing.  On x86-64 each kernel is built for AVX-512, AVX2 and the baseline, picked when the library
loads.  Where no compiler was found at install time (or with ``LOVASZ_NO_NATIVE=1``) the library is
absent, :data:`AVAILABLE` is false and the automatic choice uses the PyTorch engine on the CPU, saying so
once (:mod:`.backends`).

Every kernel takes its arguments as one array of int64 (pointers and integers) in the order of the
comment above it in ``_native.c``; :data:`ARITY` is each kernel's argument count, which the library
exports too (``lovasz_kernel_arity``): a library whose counts differ is refused as stale when it loads,
and :func:`_run` checks the count it packs.

The kernels run on PyTorch's OpenMP team (:mod:`.cpu_threads`): the library calls ``GOMP_parallel``
itself, so no Python runs on the worker threads; with ``LOVASZ_THREADS=pool`` (or no OpenMP runtime) a
thread pool calls them instead.  Pass 1 splits the batch into ``NUM_CHUNKS`` fixed pixel ranges (one
image each per image), each with its own anchors, and pass 2 gives each group to one unit that adds its
elements in order, so results do not depend on the number of threads or the runtime.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sys

import numpy as np
import torch

from .._checks import NONFINITE, bad_labels_message
from ..surrogates import HINGE, PROBS, SIGMOID, SIGMOID_PROBS, SOFTMAX, Surrogate
from . import config, cpu_threads
from .histogram import Binning, Histogram, inverse_top
from .result import HeadElements, KernelLosses

__all__ = [
    "ARITY", "AVAILABLE", "NAME", "backward", "empty_table", "global_losses", "head", "histogram", "library_path",
    "losses", "saves_errors", "table_arg", "tables",
]  # fmt: skip

NAME = "native"
NUM_CHUNKS = 8  # pass-1 chunks over the batch: fixed, so that results do not depend on the thread count
# Each kernel's argument count, in the library's kernel order (lovasz_run's kernel index): the length of
# the int64 array it reads, as the comment above it in _native.c lists them.
ARITY: dict[str, int] = {
    "softmax_errors": 18, "binary_errors": 15, "group_tables": 23, "histogram_rows": 11, "head_rows": 16,
    "tables_range": 10, "softmax_backward": 24, "binary_backward": 22, "softmax_backward_kept": 21,
    "send_rows": 13, "global_tables": 14,
}  # fmt: skip
_KERNELS = tuple(ARITY)
_CODES = [s.code for s in (SOFTMAX, PROBS, SIGMOID, SIGMOID_PROBS, HINGE)]  # the order of lovasz_surrogate_codes


def library_path() -> str | None:
    """The compiled library next to this file, if built: ``_native.so`` (``_native.dylib`` on macOS,
    ``_native.dll`` on Windows), a plain shared library with no Python ABI, as ``setup.py`` names it."""
    suffix = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native" + suffix)
    return path if os.path.isfile(path) else None


STALE = ""  # why the library is not used (empty when it is, or when none was built)


def _source_digest() -> str | None:
    """The SHA-256 prefix of ``_native.c`` beside this file (an editable install or a source tree), as
    ``setup.py`` computes it; ``None`` where the source is not shipped (a wheel)."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native.c")
    if not os.path.exists(source):
        return None
    with open(source, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _load() -> ctypes.CDLL | None:
    global STALE
    if config.settings().no_native:  # as where the library was not built
        STALE = "LOVASZ_NO_NATIVE=1 is set, so the native library is not loaded"
        return None
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        STALE = f"the native library {path} does not load ({exc})"
        return None
    lib.lovasz_num_kernels.restype = ctypes.c_int
    lib.lovasz_kernel_arity.restype = ctypes.c_int
    lib.lovasz_kernel_arity.argtypes = [ctypes.c_int]
    lib.lovasz_block.restype = ctypes.c_int
    lib.lovasz_source_digest.restype = ctypes.c_char_p
    built_from, source = lib.lovasz_source_digest().decode(), _source_digest()
    if source is not None and built_from != source:
        STALE = (
            f"the native library {path} was built from another version of _native.c; "
            "reinstall lovasz (pip install -e .) to rebuild it"
        )
        return None
    codes = (ctypes.c_int32 * len(_CODES))()
    lib.lovasz_surrogate_codes(codes)
    if lib.lovasz_num_kernels() != len(_KERNELS) or list(codes) != _CODES:
        STALE = f"the native library {path} does not match this version of lovasz; reinstall it"
        return None
    arity = {name: lib.lovasz_kernel_arity(k) for k, name in enumerate(_KERNELS)}
    if arity != ARITY:
        wrong = ", ".join(f"{name} takes {arity[name]} (expected {n})" for name, n in ARITY.items() if arity[name] != n)
        STALE = (
            f"the native library {path} takes other kernel arguments than this version of lovasz ({wrong}); "
            "reinstall lovasz (pip install -e .) to rebuild it"
        )
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lovasz_run.argtypes = [ctypes.c_int, ptr, i64, i64, i64, ptr]
    lib.lovasz_run.restype = ctypes.c_int
    lib.lovasz_run_range.argtypes = [ctypes.c_int, ptr, i64, i64]
    lib.lovasz_run_range.restype = ctypes.c_int
    return lib


_LIB = _load()
AVAILABLE = _LIB is not None
_BLOCK = _LIB.lovasz_block() if _LIB is not None else 0  # pixels per kernel block, as the library has it
_GOMP: int | None = None


def _inverse(top: torch.Tensor) -> torch.Tensor:
    """``1/U`` of the anchors, float32 and contiguous, as the kernels read it."""
    return inverse_top(top).contiguous()


def _address(v) -> int:
    return v.data_ptr() if isinstance(v, torch.Tensor) else int(v)


def _run(kernel: str, units: int, *args) -> None:
    """Run C kernel ``kernel`` over its ``units`` units with arguments ``args`` (tensors and arrays by
    address, integers by value; every buffer contiguous), on ``torch.get_num_threads()`` threads."""
    global _GOMP
    if len(args) != ARITY[kernel]:
        raise AssertionError(f"the {kernel} kernel takes {ARITY[kernel]} arguments, {len(args)} were packed")
    if units <= 0:
        return
    packed = np.array([_address(v) for v in args], np.int64)
    k = _KERNELS.index(kernel)
    workers = cpu_threads.workers(units)
    tasks = min(units, max(4 * workers, 64))  # threads claim tasks in turn: fine tasks balance uneven groups
    if workers > 1 and cpu_threads.use_pool():
        cpu_threads.run_on_pool(functools.partial(_LIB.lovasz_run_range, k, packed.ctypes.data), units, tasks, workers)
        return
    if _GOMP is None:
        lib = cpu_threads.openmp().lib
        _GOMP = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value if lib is not None else 0
    _LIB.lovasz_run(k, packed.ctypes.data, units, tasks, workers, _GOMP or None)


# Pass 1 writes the kept errors, and the softmax backwards the gradient, with streaming (non-temporal) stores
# from this size on, about a last-level cache: a buffer that large has left the caches before it is read
# again, so the stores skip reading each line first.  Same bits either way.
STREAM_MIN_BYTES = 32 << 20


def _streams(buffer: torch.Tensor) -> int:
    """1 where the kernels write ``buffer`` (float32 or int32) with streaming stores (STREAM_MIN_BYTES)."""
    return int(buffer.numel() * 4 >= STREAM_MIN_BYTES)


def saves_errors(surrogate: Surrogate) -> bool:
    """Whether backward reads the errors that forward kept (``errors=`` of :func:`histogram`), for the
    softmax surrogates; the binary ones always recompute from the scores.

    Two backwards with the same result, bit for bit, chosen by the environment variable
    ``LOVASZ_KEEP_ERRORS`` (:mod:`.config`; ``0`` when unset):

    * ``0`` (the default): backward recomputes each span's probabilities from the scores (pass 1's code
      on the same numbers, so the same errors and bins): the graph holds only the weight table, far less
      than the log-probabilities cross-entropy keeps;
    * ``1``: forward keeps the errors (as large as cross-entropy's log-probabilities) and backward computes
      no exponential: 2-19 % faster in the README's benchmark runs, holding cross-entropy's memory plus the table.

    ``benchmarks/bench_binned.py`` measures both."""
    return surrogate.per_class and config.settings().keep_errors


def tables(acc: np.ndarray, head: int) -> tuple[np.ndarray, ...]:
    """Partial accumulators ``[S, G, K, 2, 2]`` → ``(losses, table, n_fg, n_valid, cut)``, the quantities
    of :func:`.histogram.histogram_losses` (float64 losses, float32 table) from harmonic numbers."""
    cells = torch.as_tensor(acc, dtype=torch.float64).contiguous()
    slots, groups, num_bins = cells.shape[:3]
    losses_ = torch.zeros(groups, dtype=torch.float64)
    table = torch.zeros(groups, 2, num_bins, dtype=torch.float32)  # the kernels' layout (_table_view)
    n_fg, n_valid, cut = (torch.zeros(groups, dtype=torch.int64) for _ in range(3))
    _run("tables_range", groups, cells, slots, groups, num_bins, head, losses_, table, n_fg, n_valid, cut)
    return tuple(a.numpy() for a in (losses_, _table_view(table), n_fg, n_valid, cut))


def _table_view(table: torch.Tensor) -> torch.Tensor:
    """The kernels' weight table, ``[G, 2, K]`` (each group's background weights, then its foreground
    ones: backward's lookups are mostly background elements, which then share cache lines), as the
    ``[G, K, 2]`` table of the engine's contract: a view, no copy."""
    return table.transpose(1, 2)


def table_arg(table: torch.Tensor) -> torch.Tensor:
    """A ``[G, K, 2]`` table as the kernels read it, ``[G, 2, K]`` contiguous: no copy for a table that
    the kernels made (a :func:`_table_view`); any other is rearranged.  The fused forward hands its table
    on in this layout (the registry's ``table_layout="G2K"``), which :func:`backward` takes."""
    return table.transpose(1, 2).contiguous()


def empty_table(groups: int, num_bins: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialized table in the kernels' layout, ``[G, 2, K]`` (what the fused forward returns for
    them, and its fake under compile)."""
    return like.new_empty(groups, 2, num_bins, dtype=torch.float32)


def _groups(bsz: int, c: int, per_image: bool, ragged: torch.Tensor | None) -> tuple[int, bool, int]:
    """``(G, per_image as the kernels take it, the rag argument)``: a ragged batch (``ragged``: int64
    ``[B + S + 1]``, each image's sample then the samples' image offsets, images sorted by sample; the
    ``rag`` of ``_native.c``) has ``S·C`` groups and runs in the batch layout (pass 1 in fixed chunks)."""
    if ragged is None:
        return (bsz * c if per_image else c), per_image, 0
    samples = ragged.numel() - bsz - 1
    return samples * c, False, ragged.data_ptr()


def _pass1(x32, t, surrogate, per_image, ignore_index, errors, reduce_top, counts=False, ragged=None):
    """Pass 1: the signed error bits (into ``errors`` when given), the anchors and their inverses; with
    ``counts`` (softmax surrogates), also each group's foreground and valid labels ``[G]`` int64."""
    bsz, c, n = x32.shape
    groups, per_image, rag = _groups(bsz, c, per_image, ragged)
    units = bsz if per_image else NUM_CHUNKS
    t = t.contiguous()
    use_ignore = ignore_index is not None
    bits = torch.empty_like(x32) if errors is None else errors
    tops = torch.zeros(units, groups, dtype=torch.float32)
    flags = torch.zeros(units, dtype=torch.int32)
    kernel = "softmax_errors" if surrogate.per_class else "binary_errors"
    ignore = int(ignore_index) if use_ignore else 0
    extra = ()
    if surrogate.per_class:  # the softmax kernel counts each group's labels too, and may stream its stores
        fg_counts, valid_counts = (torch.zeros(units, groups, dtype=torch.int64) for _ in range(2))
        extra = (fg_counts, valid_counts, _streams(bits))
    _run(kernel, units, x32, t, bsz, c, n, ignore, use_ignore, surrogate.code, per_image, NUM_CHUNKS, bits, tops,
         groups, flags, *extra, rag)  # fmt: skip
    # Pass 1 checked the inputs as it read them (checks_inputs); each unit's flags are bits, so test each
    # bit over all units (a maximum would hide a NaN in one unit behind a bad label in another).  These
    # few-element reductions run in NumPy: a PyTorch operator costs tens of microseconds here, where the
    # kernel has just streamed the inputs through the caches.
    found = int(np.bitwise_or.reduce(flags.numpy()))
    if found & 1:
        raise ValueError(NONFINITE)
    if found & 2:
        raise ValueError(bad_labels_message(t, c if surrogate.per_class else None, ignore_index))
    top = torch.from_numpy(tops.numpy().max(axis=0))
    if reduce_top is not None:
        top = reduce_top(top)
    if counts:
        return bits, top, _inverse(top), *(torch.from_numpy(v.numpy().sum(axis=0)) for v in extra[:2])
    return bits, top, _inverse(top)


def histogram(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    reduce_top=None,
    errors: torch.Tensor | None = None,
    ragged: torch.Tensor | None = None,
) -> Histogram:
    """Histogram ``[1, G, K, 2, 2]`` of the errors (the contract of :mod:`.fused`); ``errors``, when given,
    receives the signed error bits that :func:`head` and backward read.  ``ragged``: the groups of a ragged
    batch (:func:`_groups`)."""
    bsz, c, n = x32.shape
    groups, kernel_per_image, rag = _groups(bsz, c, per_image, ragged)
    bits, top, inv = _pass1(x32, t, surrogate, per_image, ignore_index, errors, reduce_top, ragged=ragged)
    acc = torch.zeros(1, groups, b.num_bins, 2, 2, dtype=torch.float64)
    _run("histogram_rows", groups, bits, bsz, c, n, kernel_per_image, b.lo, b.per_octave, b.half, inv, acc, rag)
    return Histogram(acc, top, b)


def losses(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    head_size: int,
    errors: torch.Tensor,
    present_only: bool = False,
    ragged: torch.Tensor | None = None,
) -> KernelLosses:
    """The local loss in one go (pass 1, then pass 2 per group), with the head's exact weights computed in
    the kernel too (:func:`.histogram.head_weights`' ranking and formulas, in C; the losses include the
    head); ``head_values`` -1 past each group's head.

    ``present_only`` (softmax surrogates): the caller needs the losses of groups with a foreground label
    only (``classes="present"``), so the groups without one, which pass 1 counted, are left out of pass 2:
    loss 0, ``cut`` -1 (backward gives them no gradient), no table entries.  At 21 or 150 classes an image
    holds a few of them, so per image most groups are left out.  ``ragged``: the groups of a ragged batch
    (:func:`_groups`)."""
    bsz, c, n = x32.shape
    groups, kernel_per_image, rag = _groups(bsz, c, per_image, ragged)
    skip: int | torch.Tensor = 0  # no group left out
    valid_counts: int | torch.Tensor = 0
    if present_only and surrogate.per_class:
        bits, top, inv, fg_counts, valid_counts = _pass1(
            x32, t, surrogate, per_image, ignore_index, errors, None, counts=True, ragged=ragged
        )
        skip = (fg_counts == 0).to(torch.uint8)
    else:
        bits, top, inv = _pass1(x32, t, surrogate, per_image, ignore_index, errors, None, ragged=ragged)
    loss = torch.zeros(groups, dtype=torch.float64)
    # Uninitialized: the kernel zeroes each group's bins that its elements fall in, the only ones backward
    # reads (a [G, K, 2] memset is a pass over up to tens of MB per image-and-class groups).
    table = torch.empty(groups, 2, b.num_bins, dtype=torch.float32)  # the kernels' layout (_table_view)
    n_fg, n_valid, cut, counts = (torch.zeros(groups, dtype=torch.int64) for _ in range(4))
    values = torch.full((groups, head_size), -1.0)  # -1 past each group's head (errors are >= 0)
    fg = torch.zeros(groups, head_size, dtype=torch.bool)
    weights = torch.zeros(groups, head_size, dtype=torch.float32)
    _run("group_tables", groups, bits, bsz, c, n, kernel_per_image, b.lo, b.per_octave, b.half, inv, head_size, loss,
         table, n_fg, n_valid, cut, values, fg, counts, head_size, weights, skip, valid_counts, rag)  # fmt: skip
    return KernelLosses(top, loss, _table_view(table), n_fg, n_valid, cut, values, fg, weights)


def global_losses(
    x32: torch.Tensor,
    t: torch.Tensor,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    b: Binning,
    head_size: int,
    errors: torch.Tensor,
    sync,
) -> KernelLosses:
    """The loss of all ranks' inputs together (``sync``: a :class:`lovasz.distributed.ProcessSync`): pass 1
    with the anchors' all-reduce (max), then one all-reduce (sum) of a float32 buffer that holds this rank's
    histogram and its candidates for the exact head, filled by one kernel (``send_rows``) and read by
    another (``global_tables``), as :func:`.fused._forward`'s generic path does in PyTorch.  The head is
    ``[G, world_size · head_size]`` (every rank's candidates side by side, -1 where unused)."""
    bsz, c, n = x32.shape
    groups = bsz * c if per_image else c
    bits, top, inv = _pass1(x32, t, surrogate, per_image, ignore_index, errors, sync.all_max)
    k, world = b.num_bins, sync.world_size
    hist = groups * k * 4
    buffer = torch.empty(hist + world * 3 * groups * head_size, dtype=torch.float32)
    blocks = buffer[hist:].view(world, 3, groups, head_size)
    blocks.zero_()  # the other ranks' blocks: they add theirs
    _run("send_rows", groups, bits, bsz, c, n, per_image, b.lo, b.per_octave, b.half, inv, head_size, buffer,
         blocks[sync.rank], head_size)  # fmt: skip
    sync.sum_in_place(buffer)
    losses_ = torch.zeros(groups, dtype=torch.float64)
    table = torch.empty(groups, 2, k, dtype=torch.float32)
    n_fg, n_valid, cut = (torch.zeros(groups, dtype=torch.int64) for _ in range(3))
    width = world * head_size
    values = torch.empty(groups, width, dtype=torch.float32)
    fg = torch.empty(groups, width, dtype=torch.bool)
    weights = torch.empty(groups, width, dtype=torch.float32)
    _run("global_tables", groups, buffer, groups, k, head_size, world, head_size, losses_, table, n_fg, n_valid, cut,
         values, fg, weights)  # fmt: skip
    return KernelLosses(top, losses_, _table_view(table), n_fg, n_valid, cut, values, fg, weights)


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
    ragged: torch.Tensor | None = None,
) -> HeadElements:
    """The elements of each group's exact head (bins from ``cut[g]`` up), read from the ``errors`` that
    :func:`histogram` wrote (``ragged``: the groups of a ragged batch, :func:`_groups`)."""
    if errors is None:
        raise ValueError("the native kernels read the head from the errors that histogram(errors=...) wrote")
    bsz, c, n = errors.shape
    groups = cut.shape[0]
    values = torch.zeros(groups, capacity, dtype=torch.float32)
    fgs = torch.zeros(groups, capacity, dtype=torch.bool)
    bins = torch.zeros(groups, capacity, dtype=torch.int32)
    counts = torch.zeros(groups, dtype=torch.int64)
    inv = _inverse(top)
    cut = cut.to(torch.int64).contiguous()
    _, kernel_per_image, rag = _groups(bsz, c, per_image, ragged)
    _run("head_rows", groups, errors, bsz, c, n, kernel_per_image, cut, inv, b.lo, b.per_octave, b.half, values, fgs,
         bins, counts, capacity, rag)  # fmt: skip
    return HeadElements(values, fgs, bins.long(), counts)


# Pixels per unit of the softmax backwards, which go class by class over a unit's span (see _native.c):
# long contiguous row reads, and each class's table reused across the span (docs/engine.md gives the
# measurements behind the length).  No result depends on it (tests/test_binned.py).
SPAN = 1024


def _span(pixels: int, images: int) -> int:
    """The span for ``images`` images of ``pixels`` pixels: :data:`SPAN`, shorter where that would leave
    fewer than four units per thread (a multiple of the library's block in any case)."""
    per_unit = -(-images * pixels // (4 * max(1, torch.get_num_threads())))
    return max(_BLOCK, min(SPAN, -(-per_unit // _BLOCK) * _BLOCK))


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
    scale: torch.Tensor | None = None,
    ragged: torch.Tensor | None = None,
) -> None:
    """Write d loss / d ``x32`` into ``grad`` (the contract of :mod:`.fused`): from the ``errors`` that
    forward kept when given (softmax surrogates, :func:`saves_errors`), else recomputed from ``x32`` and
    ``t``.  ``table`` is in the kernels' layout, ``[G, 2, K]`` (:func:`table_arg`).  With ``scale``
    (``[G]`` float32, each group's upstream gradient) it is the unscaled table and the kernels scale its
    entries as they read them (the head weights come scaled).  ``ragged``: the groups of a ragged batch
    (:func:`_groups`)."""
    bsz, c, n = grad.shape
    if grad.numel() == 0:
        return
    _, per_image, rag = _groups(bsz, c, per_image, ragged)
    span = _span(n, bsz)
    nspans = -(-n // span)
    inv = _inverse(top)
    cut, values, fg, weights = (h.contiguous() for h in head)
    cut = cut.to(torch.int64)
    capacity = values.shape[1]
    if table.shape[1:] != (2, b.num_bins):
        raise ValueError(f"backward takes the table as [G, 2, K] (table_arg), got {tuple(table.shape)}")
    table = table.contiguous()
    scale_arg = 0 if scale is None else scale.to(torch.float32).contiguous()
    stream = _streams(grad)  # a gradient larger than a last-level cache: streaming stores
    if surrogate.per_class and errors is not None:  # the errors that forward kept (saves_errors)
        _run("softmax_backward_kept", bsz * nspans, errors, bsz, c, n, surrogate.code, per_image, b.lo,
             b.per_octave, b.half, inv, table, cut, values, fg, weights, capacity, grad, scale_arg, span,
             stream, rag)  # fmt: skip
        return
    use_ignore = ignore_index is not None
    ignore = int(ignore_index) if use_ignore else 0
    if surrogate.per_class:
        _run("softmax_backward", bsz * nspans, x32.contiguous(), t.contiguous(), bsz, c, n, ignore, use_ignore,
             surrogate.code, per_image, b.lo, b.per_octave, b.half, inv, table, cut, values, fg, weights, capacity,
             grad, scale_arg, span, stream, rag)  # fmt: skip
        return
    nblocks = -(-n // _BLOCK)
    _run("binary_backward", bsz * c * nblocks, x32.contiguous(), t.contiguous(), bsz, c, n, ignore, use_ignore,
         surrogate.code, per_image, b.lo, b.per_octave, b.half, inv, table, cut, values, fg, weights, capacity, grad,
         scale_arg, rag)  # fmt: skip
