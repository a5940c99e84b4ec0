"""Up-front input checks shared by every loss.

Shape, dtype and option checks are free (metadata only).  Value checks (finite inputs, label range, 0/1
targets, finite non-negative weights) need to look at the data; they are gathered into one small boolean
tensor and read back with a single host synchronisation.

Under ``torch.compile``:

* every shape, dtype and option check (``classes`` including the ids below ``C``, ``ignore_index``,
  ``bins``, ``reduction``, ``backend``, the boolean flags, the length and dtype of ``weight``) still
  runs, while the call is traced;
* the value checks still run, as ``torch._assert_async`` nodes of the compiled graph instead of a host
  synchronisation (no data-dependent branch, no graph break): NaN/Inf in ``input``, labels outside
  ``[0, C)`` and not ``ignore_index``, labels other than 0/1 (or ``ignore_index``) for the binary
  losses, probabilities outside ``[0, 1]`` with ``from_logits=False``, negative or non-finite class
  weights.  What differs is the error: on the CPU a ``RuntimeError`` with the eager message (tested with
  the default inductor backend and with ``aot_eager``); on CUDA, inductor emits ``tl.device_assert``
  (its Triton kernels are built with ``debug=True``), a device-side assertion after which the CUDA
  context is unusable and the process must restart (not tested here: debug bad data in eager mode); on
  ROCm inductor builds without ``debug``, so the assertions are no-ops there;
* nothing is skipped: the eager NaN/Inf check first tests the sum and re-checks element by element only
  when the sum is not finite; the compiled check is elementwise (fused into the graph).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .types import BACKENDS, CLASS_KEYWORDS, REDUCTIONS


def compiling() -> bool:
    """Whether the call is being traced by ``torch.compile``."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def check_flag(value: object, name: str) -> bool:
    """A boolean option must be ``True`` or ``False``: a string such as ``"no"`` or a number would
    silently count as true (or false) in an ``if``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def _is_integer(value: object) -> bool:
    """Python and numpy integers (``numbers.Integral``), not ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


MAX_BINS = 1 << 16
"""The most bins a call may ask for.  The relative error bound is ``1/P`` with ``P = (bins - 2) // 38``
sub-bins per octave (:mod:`lovasz.engine.histogram`): 0.06 % at ``MAX_BINS``, while the weight table grows
as ``groups × bins`` float64 (``bins=10**9`` would ask for gigabytes per group)."""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def check_bins(bins: int | str | None) -> int | str | None:
    """Check ``bins``; return it as a plain ``int`` (numpy integers are accepted), ``None`` or ``"auto"``."""
    if bins is None or (isinstance(bins, str) and bins == "auto"):
        return bins
    if not _is_integer(bins):
        raise TypeError(
            f"bins must be 'auto', None (exact engine) or an int (binned engine), got {type(bins).__name__}"
        )
    bins = int(bins)
    if bins < 64:
        raise ValueError(f"bins must be at least 64, got {bins}; use bins=None for the exact engine")
    if bins > MAX_BINS:
        raise ValueError(
            f"bins must be at most {MAX_BINS}, got {bins}: the weight table grows with bins while the value "
            f"bound gains little (0.06 % at {MAX_BINS}); use bins=None for the exact engine"
        )
    return bins


def check_float_input(input: Tensor, name: str = "input", allow_empty: bool = False) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, float16 or bfloat16), "
            f"got {input.dtype}; pass the network's raw scores"
        )
    if allow_empty and input.dim() >= 2 and input.shape[0] == 0 and math.prod(input.shape[1:]) > 0:
        return  # an empty local batch of a loss over several processes
    if input.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input.shape)}); the loss needs at least one pixel")


def check_ignore_index(ignore_index: int | None) -> int | None:
    """Check ``ignore_index``; return it as a plain ``int`` (numpy integers are accepted)."""
    if ignore_index is None:
        return None
    if not _is_integer(ignore_index):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    if not INT64_MIN <= int(ignore_index) <= INT64_MAX:
        raise ValueError(
            f"ignore_index must fit in a 64-bit integer (labels are compared as int64), got {int(ignore_index)}"
        )
    return int(ignore_index)


def wide_labels(target: Tensor) -> Tensor:
    """Integer labels as ``int64`` (a copy only for narrower dtypes; ``int64``, ``bool`` and float targets
    are returned as they are).  Labels are compared with ``ignore_index`` and the class count as int64:
    in a narrow dtype PyTorch wraps the Python integer (``int8`` −1 would equal ``ignore_index=255``, and
    ``uint8`` 255 would pass ``>= 300``), so a wrong label would be silently ignored."""
    if target.dtype in (torch.int64, torch.bool) or target.is_floating_point() or target.is_complex():
        return target
    return target.to(torch.int64)


def check_softmax_shapes(input: Tensor, target: Tensor, allow_empty: bool = False) -> None:
    check_float_input(input, allow_empty=allow_empty)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of class ids, got {type(target).__name__}")
    if input.dim() < 2:
        raise ValueError(f"input must have shape [B, C, *spatial] (at least 2 dims), got {tuple(input.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class ids (torch.long or another integer dtype), got {target.dtype}; "
            "convert with target.long()"
        )
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape [B, *spatial] = {expected} for input of shape {tuple(input.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}; move them together")


def binary_layout(input: Tensor, target: Tensor, allow_empty: bool = False) -> tuple[Tensor, Tensor]:
    """Check a binary/multi-label pair and return both as ``[B, C, N]`` (``C = 1`` for binary)."""
    check_float_input(input, allow_empty=allow_empty)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of 0/1 labels, got {type(target).__name__}")
    if target.is_complex():
        raise TypeError(f"target must hold 0/1 labels (integer, bool or float), got {target.dtype}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}; move them together")
    if input.dim() < 1:
        raise ValueError("input must have shape [B, *spatial], [B, 1, *spatial] or [B, C, *spatial]")
    b = input.shape[0]
    if tuple(target.shape) == tuple(input.shape):
        # Same shapes: 4 or more dims are [B, C, *spatial] (multi-label, C may be 1); up to 3 dims are
        # binary [B, *spatial] (so [B, H, W] masks work as in the reference code; a binary volume is
        # passed as [B, 1, D, H, W]).
        if input.dim() >= 4:
            c, n = input.shape[1], math.prod(input.shape[2:])
            return input.reshape(b, c, n), target.reshape(b, c, n)
        n = math.prod(input.shape[1:])
        return input.reshape(b, 1, n), target.reshape(b, 1, n)
    if input.dim() >= 2 and input.shape[1] == 1 and tuple(target.shape) == (b, *input.shape[2:]):
        n = math.prod(input.shape[2:])
        return input.reshape(b, 1, n), target.reshape(b, 1, n)
    raise ValueError(
        f"target shape {tuple(target.shape)} does not fit input shape {tuple(input.shape)}: expected input "
        "[B, *spatial] with target [B, *spatial], input [B, 1, *spatial] with target [B, *spatial] or "
        "[B, 1, *spatial], or multi-label input and target both [B, C, *spatial]"
    )


def _class_id(c: object) -> bool:
    """A class id: a Python or numpy integer, a ``SymInt`` or a 0-dim integer tensor; not ``bool``."""
    if isinstance(c, bool):
        return False
    if _is_integer(c) or isinstance(c, torch.SymInt):
        return True
    return (
        isinstance(c, Tensor)
        and c.dim() == 0
        and not (c.is_floating_point() or c.is_complex() or c.dtype == torch.bool)
    )


def check_class_list(classes: str | Sequence[int]) -> str | tuple[int, ...]:
    """The checks of ``classes`` that do not need the number of classes (the modules run them at
    construction): a keyword, or a non-empty sequence of non-negative integer ids.  Returns the keyword,
    or the ids as a tuple of plain ``int``."""
    if isinstance(classes, str):
        if classes not in CLASS_KEYWORDS:
            raise ValueError(f"classes must be 'present', 'all' or a sequence of class ids, got {classes!r}")
        return classes
    try:
        ids = list(classes)
    except TypeError:
        raise TypeError(
            f"classes must be 'present', 'all' or a sequence of class ids, got {type(classes).__name__}"
        ) from None
    if len(ids) == 0:
        raise ValueError("classes is an empty sequence; select at least one class id")
    for c in ids:
        if not _class_id(c):
            raise TypeError(f"classes must contain integer class ids, got {c!r}")
        if int(c) < 0:
            raise ValueError(f"class id {int(c)} in classes is negative; class ids are in [0, C)")
    return tuple(int(c) for c in ids)


def check_classes(classes: str | Sequence[int], num_classes: int) -> None:
    """Every check of ``classes`` for an input with ``num_classes`` classes."""
    if isinstance(classes, np.ndarray):
        # The functions pass ``classes`` on unchanged and compare it with "present"/"all", which a numpy
        # array answers elementwise; the modules convert it to a tuple at construction.
        raise TypeError(
            "classes must be 'present', 'all' or a list/tuple of class ids, got a numpy array; "
            "pass classes=arr.tolist()"
        )
    ids = check_class_list(classes)
    if isinstance(ids, str):
        return
    for c in ids:
        if c >= num_classes:
            raise ValueError(f"class id {c} in classes is outside [0, {num_classes}) for input with C={num_classes}")


def weight_tensor(
    weight: Tensor | Sequence[float], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``weight`` as a ``dtype`` tensor, refusing strings, non-numbers and non-real dtypes."""
    if isinstance(weight, str | bytes):
        raise TypeError(
            f"weight must be a 1-D tensor or sequence of per-class numbers, got the string {weight!r}; "
            "compute class weights yourself (e.g. inverse class frequencies) and pass them"
        )
    try:
        w = torch.as_tensor(weight, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"weight must be a 1-D tensor or sequence of per-class numbers, got {type(weight).__name__} ({exc})"
        ) from None
    if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"weight must be real-valued, got {w.dtype}")
    return w.to(dtype)


def loss_dtype(input: Tensor) -> torch.dtype:
    """The dtype the losses are computed in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def check_module_weight(weight: Tensor | Sequence[float] | None) -> Tensor | None:
    """The checks of ``weight`` that do not need the number of classes (the modules run them at
    construction, values included): a non-empty 1-D real tensor of finite non-negative numbers, not all
    zero.  Returns it as a float32 tensor, float64 if it was given as one (a copy: the module's buffer does
    not alias the caller's tensor); each call converts it to the input's loss dtype."""
    if weight is None:
        return None
    keep64 = isinstance(weight, Tensor) and weight.dtype == torch.float64
    w = weight_tensor(weight, dtype=torch.float64 if keep64 else torch.float32).detach().clone()
    if w.dim() != 1 or w.shape[0] == 0:
        raise ValueError(f"weight must be a 1-D tensor with one entry per class, got shape {tuple(w.shape)}")
    bad, message = bad_weight(w)
    if bool(bad):
        raise ValueError(message)
    return w


def class_weight(
    weight: Tensor | Sequence[float] | None, num_classes: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor | None:
    """``weight`` for an input with ``num_classes`` classes, as a ``dtype`` tensor on ``device``."""
    if weight is None:
        return None
    w = weight_tensor(weight, device, dtype)
    if w.dim() != 1 or w.shape[0] != num_classes:
        raise ValueError(
            f"weight must be a 1-D tensor with one entry per class (length C={num_classes}), got shape {tuple(w.shape)}"
        )
    return w


def nonfinite_flag(x: Tensor) -> Tensor:
    """True if ``x`` may hold NaN/Inf: NaN and Inf propagate through a sum, which is much cheaper than an
    elementwise test.  A finite tensor whose sum overflows is re-checked elementwise in
    :func:`run_value_checks`, so it is never reported by mistake."""
    return ~torch.isfinite(x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32))


NONFINITE = "input contains NaN or Inf values"


class _NamesValues(str):
    """A check's message that, when raised eagerly, also names (up to 5 of) the offending values; they are
    looked up only then, so a passing check costs nothing more.  Under ``torch.compile`` the predicates
    give the plain text (the graph's assertion carries a fixed message)."""

    def __new__(cls, text: str, values: Tensor, bad: Tensor) -> _NamesValues:
        obj = super().__new__(cls, text)
        obj._values, obj._bad = values, bad
        return obj

    def eager(self) -> str:
        found = torch.unique(self._values[self._bad].detach().cpu())[:5].tolist()
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in found)
        return f"{self} (found {shown})"


def run_value_checks(x: Tensor, checks: list[tuple[Tensor, str]], finite_checked: bool = False) -> None:
    """Check ``x`` for NaN/Inf and evaluate boolean 'is bad' flags, with one host sync in the common
    case; raise the first failing message.  ``finite_checked``: the kernels that will run refuse NaN/Inf
    in ``x`` themselves, with the same message (:attr:`lovasz.engine.backends.Decision.checks_inputs`),
    so ``x`` is not read here for it.

    Under ``torch.compile`` each check becomes a ``torch._assert_async`` node of the graph (see the module
    docstring): no host synchronisation and no data-dependent branch, but the bad input is still refused.
    """
    if compiling():
        if not finite_checked:
            torch._assert_async(torch.isfinite(x).all(), NONFINITE)
        for bad, message in checks:
            torch._assert_async(~bad, message)
        return
    if finite_checked and not checks:
        return
    first = x.new_zeros((), dtype=torch.bool) if finite_checked else nonfinite_flag(x).reshape(())
    flags = torch.stack([first] + [c.reshape(()) for c, _ in checks]).tolist()
    if flags[0] and not bool(torch.isfinite(x).all()):
        raise ValueError(NONFINITE)
    for bad, (_, message) in zip(flags[1:], checks, strict=True):
        if bad:
            raise ValueError(message.eager() if isinstance(message, _NamesValues) else message)


# Value predicates: each returns a scalar boolean tensor, True when the input is bad, and its message.


def not_probabilities(x: Tensor) -> tuple[Tensor, str]:
    return ((x < 0) | (x > 1)).any(), "input must hold probabilities in [0, 1] when from_logits=False"


def labels_out_of_range(target: Tensor, num_classes: int, ignore_index: int | None) -> tuple[Tensor, str]:
    target = wide_labels(target)
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    hint = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
    text = f"target has labels outside [0, {num_classes}){hint}; set ignore_index for void labels"
    return bad.any(), text if compiling() else _NamesValues(text, target, bad)


def labels_not_binary(target: Tensor, ignore_index: int | None) -> tuple[Tensor, str]:
    target = wide_labels(target)
    bad = (target != 0) & (target != 1)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    hint = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    text = f"target must contain only 0 and 1{hint} for a binary loss"
    return bad.any(), text if compiling() else _NamesValues(text, target, bad)


def bad_labels_message(target: Tensor, num_classes: int | None, ignore_index: int | None) -> str:
    """The message of :func:`labels_out_of_range` (``num_classes``) or :func:`labels_not_binary` (None),
    with the offending values, for kernels that found bad labels themselves."""
    if num_classes is None:
        _, message = labels_not_binary(target, ignore_index)
    else:
        _, message = labels_out_of_range(target, num_classes, ignore_index)
    return message.eager() if isinstance(message, _NamesValues) else message


def bad_weight(w: Tensor) -> tuple[Tensor, str]:
    """Refuses negative, non-finite and all-zero class weights (all zero would give a loss of 0 and no
    gradient, silently)."""
    bad = (w < 0).any() | ~torch.isfinite(w).all() | ~(w > 0).any()
    return bad, "weight must be finite and non-negative, with at least one positive entry"


def check_options(
    *, ignore_index: int | None, bins: int | None, reduction: str, backend: str, **flags: bool
) -> tuple[int | None, int | None]:
    """The keyword arguments shared by every loss; ``flags`` are the boolean options by name
    (``per_image=...``, ``from_logits=...``), each of which must be ``True`` or ``False``.  Returns
    ``(ignore_index, bins)`` as plain ints (numpy integers are accepted)."""
    check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    bins = check_bins(bins)
    check_backend(backend)
    for name, value in flags.items():
        check_flag(value, name)
    return ignore_index, bins


def check_softmax(
    input: Tensor,
    target: Tensor,
    *,
    classes: str | Sequence[int],
    ignore_index: int | None,
    weight: Tensor | Sequence[float] | None,
    from_logits: bool,
    bins: int | None,
    reduction: str,
    backend: str,
    per_image: bool,
    allow_empty: bool = False,
    kernels_check: bool = False,
) -> tuple[Tensor | None, str | tuple[int, ...], int | None, int | None]:
    """Every check of :func:`lovasz.lovasz_softmax`.  Returns the class weights as a float32 tensor, and
    ``classes``, ``ignore_index`` and ``bins`` as plain Python values (numpy integers accepted)."""
    check_softmax_shapes(input, target, allow_empty=allow_empty)
    ignore_index, bins = check_options(
        ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend, from_logits=from_logits,
        per_image=per_image,
    )  # fmt: skip
    num_classes = input.shape[1]
    check_classes(classes, num_classes)
    classes = check_class_list(classes)
    w = class_weight(weight, num_classes, input.device, loss_dtype(input))
    value_checks = [] if from_logits else [not_probabilities(input)]
    if not kernels_check:  # else the kernels check the labels and scores as they read them
        value_checks.append(labels_out_of_range(target, num_classes, ignore_index))
    if w is not None:
        value_checks.append(bad_weight(w))
    run_value_checks(input, value_checks, kernels_check)
    return w, classes, ignore_index, bins


def check_binary(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None,
    from_logits: bool,
    bins: int | None,
    reduction: str,
    backend: str,
    per_image: bool,
    allow_empty: bool = False,
    kernels_check: bool = False,
) -> tuple[Tensor, Tensor, int | None, int | None]:
    """Every check of :func:`lovasz.lovasz_hinge` and :func:`lovasz.lovasz_sigmoid`.  Returns input and
    target as ``[B, C, N]``, and ``ignore_index`` and ``bins`` as plain ints."""
    x, t = binary_layout(input, target, allow_empty=allow_empty)
    ignore_index, bins = check_options(
        ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend, from_logits=from_logits,
        per_image=per_image,
    )  # fmt: skip
    value_checks = [] if from_logits else [not_probabilities(x)]
    # The kernels check integer labels as they read them; float labels are checked here whatever runs,
    # because the kernels read labels as int64 and a conversion would round 0.5 or 0.999 to a valid label.
    if not kernels_check or t.is_floating_point():
        value_checks.append(labels_not_binary(t, ignore_index))
    run_value_checks(x, value_checks, kernels_check)
    return x, t, ignore_index, bins


def check_lovasz_weight(lovasz_weight: float) -> float:
    """The weight of the Lovász term in :class:`lovasz.CrossEntropyLovaszLoss`: a finite real >= 0."""
    if isinstance(lovasz_weight, bool) or not isinstance(lovasz_weight, numbers.Real):
        raise TypeError(f"lovasz_weight must be a real number, got {type(lovasz_weight).__name__}")
    value = float(lovasz_weight)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"lovasz_weight must be finite and non-negative, got {lovasz_weight!r}")
    return value


def check_warmup_steps(warmup_steps: int) -> int:
    """The warm-up length of :class:`lovasz.CrossEntropyLovaszLoss`: an int >= 0 (0: no warm-up)."""
    if not _is_integer(warmup_steps):
        raise TypeError(f"warmup_steps must be a non-negative int, got {type(warmup_steps).__name__}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps}")
    return int(warmup_steps)


def check_batch(batch: object, input: Tensor, layout: str) -> tuple[Tensor, int, bool]:
    """The checks of ``batch=`` (one sample id per point, the ``torch_geometric`` convention) for the flat
    ``input`` of a loss (``layout``: ``"[N, C]"`` for softmax, ``"[N], [N, 1] or [N, C]"`` for binary):
    an integer tensor of shape ``[N]`` on ``input``'s device, with non-negative ids.  Returns the ids as
    int64 (the tensor itself when it is int64), the number of samples ``S = max id + 1`` (0 for no point)
    and whether the ids are sorted, read with one host synchronisation (a graph break under
    ``torch.compile``: ``S`` sets the shape of the per-sample losses)."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch must be a torch.Tensor of sample ids (one per point), got {type(batch).__name__}")
    if batch.is_floating_point() or batch.is_complex() or batch.dtype == torch.bool:
        raise TypeError(
            f"batch must hold integer sample ids (torch.long), got {batch.dtype}; convert with batch.long()"
        )
    if layout == "[N, C]" and input.dim() != 2:
        raise ValueError(
            f"with batch=, input must be flat points [N, C] (target [N]), got input of shape {tuple(input.shape)}; "
            "flatten the points of all samples into one list and give each its sample id in batch"
        )
    if layout != "[N, C]" and input.dim() not in (1, 2):
        raise ValueError(
            f"with batch=, input must be flat points {layout}, got input of shape {tuple(input.shape)}; "
            "flatten the points of all samples into one list and give each its sample id in batch"
        )
    n = input.shape[0]
    if batch.dim() != 1 or batch.shape[0] != n:
        raise ValueError(
            f"batch must have shape [N] = ({n},), one sample id per point of input {tuple(input.shape)}, "
            f"got {tuple(batch.shape)}"
        )
    if batch.device != input.device:
        raise ValueError(f"batch is on {batch.device} but input is on {input.device}; move them together")
    ids = batch if batch.dtype == torch.int64 else batch.long()
    if n == 0:
        return ids, 0, True
    unsorted = (ids[1:] < ids[:-1]).any().long().reshape(1)
    low, high, descents = (int(v) for v in torch.cat([torch.stack(torch.aminmax(ids.detach())), unsorted]).tolist())
    if low < 0:
        raise ValueError(f"batch has negative sample ids (found {low}); sample ids are 0, 1, 2, ...")
    if high >= max(n, MAX_SPARSE_SAMPLES):  # the losses are per sample id: [max id + 1] of them, mostly empty
        raise ValueError(
            f"batch has sample id {high} for {n} points: the loss would hold {high + 1} samples, most of them "
            "empty; number the samples 0, 1, 2, ..., e.g. batch = torch.unique(batch, return_inverse=True)[1]"
        )
    return ids, high + 1, descents == 0


# Sample ids up to this (or up to the number of points) are accepted even where most of them are missing.
MAX_SPARSE_SAMPLES = 1 << 16
