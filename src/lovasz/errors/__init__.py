"""Error vectors, one per loss: turn network outputs and labels into Lovász groups.

:func:`build_errors` picks the builder of a surrogate named in :mod:`lovasz.surrogates`.  Every builder
returns a :class:`Groups`: a ``[G, P]`` matrix of non-negative errors, the matching
foreground mask and validity mask, and the shape ``(B, C)`` or ``(C,)`` that the ``G`` rows fold back into
for the reduction.  Rows are ``(image, class)`` pairs when ``per_image`` is true, classes otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..surrogates import HINGE, Surrogate

__all__ = ["Groups", "build_errors", "hinge_errors", "sigmoid_errors", "softmax_errors"]


@dataclass
class Groups:
    errors: Tensor  # [G, P], float32/float64, >= 0
    fg: Tensor  # [G, P] bool, False where not valid
    valid: Tensor | None  # [G, P] bool, or None when every pixel is valid
    shape: tuple[int, ...]  # (B, C) when per image, (C,) for the whole batch


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half and bfloat16 are accumulated in float32; float64 stays float64 (for gradcheck).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fold(errors: Tensor, fg: Tensor, valid: Tensor | None, per_image: bool) -> Groups:
    """``[B, C, N]`` tensors → rows per (image, class) or per class over the batch."""
    b, c, n = errors.shape
    if per_image:
        rows = (errors.reshape(b * c, n), fg.reshape(b * c, n))
        v = None if valid is None else valid.expand(b, c, n).reshape(b * c, n)
        return Groups(rows[0], rows[1], v, (b, c))
    e = errors.transpose(0, 1).reshape(c, b * n)
    f = fg.transpose(0, 1).reshape(c, b * n)
    v = None if valid is None else valid.expand(b, c, n).transpose(0, 1).reshape(c, b * n)
    return Groups(e, f, v, (c,))


def softmax_errors(
    input: Tensor, target: Tensor, *, per_image: bool, ignore_index: int | None, from_logits: bool
) -> Groups:
    """Errors ``|1[y = c] - p_c|`` for every class ``c`` (``p``: softmax of ``input`` over dim 1)."""
    b, c = input.shape[:2]
    n = math.prod(input.shape[2:])
    x = input.reshape(b, c, n).to(_compute_dtype(input))
    t = target.reshape(b, 1, n)  # [B, *spatial] or already [B, N]
    prob = x.softmax(dim=1) if from_logits else x
    valid = None if ignore_index is None else t != ignore_index
    fg = t == torch.arange(c, device=input.device).view(1, c, 1)
    if valid is not None:
        fg = fg & valid
    errors = torch.where(fg, 1.0 - prob, prob)
    return _fold(errors, fg, valid, per_image)


def _binary_targets(target: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    valid = None if ignore_index is None else target != ignore_index
    fg = target == 1
    if valid is not None:
        fg = fg & valid
    return fg, valid


def hinge_errors(input: Tensor, target: Tensor, *, per_image: bool, ignore_index: int | None) -> Groups:
    """Hinge errors ``max(1 - s·y, 0)`` with ``y = ±1``; ``input`` and ``target`` are ``[B, C, N]``."""
    fg, valid = _binary_targets(target, ignore_index)
    s = input.to(_compute_dtype(input))
    errors = torch.relu(1.0 - torch.where(fg, s, -s))
    return _fold(errors, fg, valid, per_image)


def sigmoid_errors(
    input: Tensor, target: Tensor, *, per_image: bool, ignore_index: int | None, from_logits: bool
) -> Groups:
    """Errors ``|y - sigmoid(x)|`` (or ``|y - p|``); ``input`` and ``target`` are ``[B, C, N]``."""
    fg, valid = _binary_targets(target, ignore_index)
    x = input.to(_compute_dtype(input))
    prob = torch.sigmoid(x) if from_logits else x
    errors = torch.where(fg, 1.0 - prob, prob)
    return _fold(errors, fg, valid, per_image)


def build_errors(
    surrogate: Surrogate, input: Tensor, target: Tensor, *, per_image: bool, ignore_index: int | None
) -> Groups:
    """Errors of ``surrogate`` for ``input`` ``[B, C, N]`` and ``target`` (``[B, N]`` class ids for the
    ``"classes"`` layout, ``[B, C, N]`` 0/1 labels for ``"channels"``)."""
    if surrogate.per_class:
        return softmax_errors(
            input, target, per_image=per_image, ignore_index=ignore_index, from_logits=surrogate.from_logits
        )
    if surrogate == HINGE:
        return hinge_errors(input, target, per_image=per_image, ignore_index=ignore_index)
    return sigmoid_errors(
        input, target, per_image=per_image, ignore_index=ignore_index, from_logits=surrogate.from_logits
    )
