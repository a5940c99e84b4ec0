"""Up-front input checks shared by every loss.

Shape and dtype checks are free (metadata only).  Value checks (finite inputs, label range, 0/1 targets)
need to look at the data; they are gathered into one small boolean tensor and read back with a single
host synchronisation.  Under ``torch.compile`` the value checks are skipped, so that the compiled graph
has no data-dependent branch; shape and dtype checks still run while tracing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .types import BACKENDS, CLASS_KEYWORDS, REDUCTIONS


def compiling() -> bool:
    """Whether the call is being traced by ``torch.compile``."""
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_bins(bins: int | None) -> None:
    if bins is None:
        return
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise TypeError(f"bins must be None (exact engine) or an int, got {type(bins).__name__}")
    if bins < 64:
        raise ValueError(f"bins must be at least 64, got {bins}; use bins=None for the exact engine")


def check_float_input(input: Tensor, name: str = "input") -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, float16 or bfloat16), "
            f"got {input.dtype}; pass the network's raw scores"
        )
    if input.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(input.shape)}); the loss needs at least one pixel")


def check_ignore_index(ignore_index: int | None) -> None:
    if ignore_index is None:
        return
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")


def check_softmax_shapes(input: Tensor, target: Tensor) -> None:
    check_float_input(input)
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


def binary_layout(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check a binary/multi-label pair and return both as ``[B, C, N]`` (``C = 1`` for binary)."""
    check_float_input(input)
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
            return input.reshape(b, input.shape[1], -1), target.reshape(b, target.shape[1], -1)
        return input.reshape(b, 1, -1), target.reshape(b, 1, -1)
    if input.dim() >= 2 and input.shape[1] == 1 and tuple(target.shape) == (b, *input.shape[2:]):
        return input.reshape(b, 1, -1), target.reshape(b, 1, -1)
    raise ValueError(
        f"target shape {tuple(target.shape)} does not fit input shape {tuple(input.shape)}: expected input "
        "[B, *spatial] with target [B, *spatial], input [B, 1, *spatial] with target [B, *spatial] or "
        "[B, 1, *spatial], or multi-label input and target both [B, C, *spatial]"
    )


def check_classes(classes: str | Sequence[int], num_classes: int) -> None:
    if isinstance(classes, str):
        if classes not in CLASS_KEYWORDS:
            raise ValueError(f"classes must be 'present', 'all' or a sequence of class ids, got {classes!r}")
        return
    try:
        ids = list(classes)
    except TypeError:
        raise TypeError(
            f"classes must be 'present', 'all' or a sequence of class ids, got {type(classes).__name__}"
        ) from None
    if len(ids) == 0:
        raise ValueError("classes is an empty sequence; select at least one class id")
    for c in ids:
        if isinstance(c, bool) or (
            not isinstance(c, int | torch.SymInt)
            and not (isinstance(c, Tensor) and c.dim() == 0 and not c.is_floating_point())
        ):
            raise TypeError(f"classes must contain integer class ids, got {c!r}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(
                f"class id {int(c)} in classes is outside [0, {num_classes}) for input with C={num_classes}"
            )


def class_weight(weight: Tensor | Sequence[float] | None, num_classes: int, device: torch.device) -> Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, device=device)
    if not (w.is_floating_point() or w.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"weight must be real-valued, got {w.dtype}")
    w = w.to(torch.float32)
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


def run_value_checks(x: Tensor, checks: list[tuple[Tensor, str]]) -> None:
    """Check ``x`` for NaN/Inf and evaluate boolean 'is bad' flags, with one host sync in the common
    case; raise the first failing message."""
    if compiling():
        return
    flags = torch.stack([nonfinite_flag(x).reshape(())] + [c.reshape(()) for c, _ in checks]).tolist()
    if flags[0] and not bool(torch.isfinite(x).all()):
        raise ValueError(NONFINITE)
    for bad, (_, message) in zip(flags[1:], checks, strict=True):
        if bad:
            raise ValueError(message)


# Value predicates: each returns a scalar boolean tensor, True when the input is bad, and its message.


def not_probabilities(x: Tensor) -> tuple[Tensor, str]:
    return ((x < 0) | (x > 1)).any(), "input must hold probabilities in [0, 1] when from_logits=False"


def labels_out_of_range(target: Tensor, num_classes: int, ignore_index: int | None) -> tuple[Tensor, str]:
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    hint = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
    return bad.any(), f"target has labels outside [0, {num_classes}){hint}; set ignore_index for void labels"


def labels_not_binary(target: Tensor, ignore_index: int | None) -> tuple[Tensor, str]:
    bad = (target != 0) & (target != 1)
    if ignore_index is not None:
        bad = bad & (target != ignore_index)
    hint = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    return bad.any(), f"target must contain only 0 and 1{hint} for a binary loss"


def bad_weight(w: Tensor) -> tuple[Tensor, str]:
    return (w < 0).any() | ~torch.isfinite(w).all(), "weight must be finite and non-negative"


def check_options(*, ignore_index: int | None, bins: int | None, reduction: str, backend: str) -> None:
    """The keyword arguments shared by every loss."""
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    check_bins(bins)
    check_backend(backend)


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
) -> Tensor | None:
    """Every check of :func:`lovasz.lovasz_softmax`; returns the class weights as a float32 tensor."""
    check_softmax_shapes(input, target)
    check_options(ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend)
    num_classes = input.shape[1]
    check_classes(classes, num_classes)
    w = class_weight(weight, num_classes, input.device)
    value_checks = [] if from_logits else [not_probabilities(input)]
    value_checks.append(labels_out_of_range(target, num_classes, ignore_index))
    if w is not None:
        value_checks.append(bad_weight(w))
    run_value_checks(input, value_checks)
    return w


def check_binary(
    input: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None,
    from_logits: bool,
    bins: int | None,
    reduction: str,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Every check of :func:`lovasz.lovasz_hinge` and :func:`lovasz.lovasz_sigmoid`; returns input and
    target as ``[B, C, N]``."""
    x, t = binary_layout(input, target)
    check_options(ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend)
    value_checks = [] if from_logits else [not_probabilities(x)]
    value_checks.append(labels_not_binary(t, ignore_index))
    run_value_checks(x, value_checks)
    return x, t
