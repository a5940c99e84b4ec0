"""Public loss functions: Lovász-Softmax, Lovász hinge and Lovász-Sigmoid.

Each function checks its inputs, builds the error vectors of its loss (:mod:`lovasz.errors`), evaluates
the Lovász extension of the Jaccard loss for every group with one engine call (:mod:`lovasz.engine`) and
reduces the group losses (:mod:`lovasz.reduce`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _checks
from .engine import Binning, lovasz_extension
from .engine.fused import backend, disable_triton, fused_binned
from .errors import Groups, hinge_errors, sigmoid_errors, softmax_errors
from .reduce import reduce_groups

__all__ = ["lovasz_hinge", "lovasz_sigmoid", "lovasz_softmax"]

ClassSelection = str | Sequence[int]


def _has_valid(groups: Groups) -> Tensor:
    shape = groups.shape
    if groups.valid is None:
        return torch.ones(shape, dtype=torch.bool, device=groups.errors.device)
    return groups.valid.any(dim=1).view(shape)


def _no_autocast(x: Tensor):
    """Losses run in float32 (or float64) whatever autocast is active: sums over millions of pixels and
    Jaccard increments of order 1/p are not safe in float16/bfloat16.  Inputs are upcast explicitly."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _group_losses(
    mode: str, x: Tensor, target: Tensor, per_image: bool, ignore_index: int | None, bins: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Losses, 'class present' and 'has a valid pixel' masks per group, shaped ``[B, C]`` or ``[C]``.

    ``x`` is ``[B, C, N]``; ``target`` is ``[B, N]`` (softmax modes) or ``[B, C, N]`` (binary modes).
    """
    b, c = x.shape[:2]
    shape = (b, c) if per_image else (c,)
    bounded = mode != "hinge"
    impl = None if bins is None else backend(x)
    if impl in ("numba", "triton"):
        binning = Binning.for_errors(bins, bounded)
        try:
            losses, n_fg, n_valid = fused_binned(
                x, target, mode=mode, per_image=per_image, ignore_index=ignore_index, binning=binning, impl=impl
            )
            return losses.view(shape), (n_fg > 0).view(shape), (n_valid > 0).view(shape)
        except Exception as exc:
            if impl != "triton" or os.environ.get("LOVASZ_BACKEND", "auto") == "triton":
                raise
            disable_triton(exc)
    if mode in ("softmax", "probs"):
        groups = softmax_errors(
            x, target, per_image=per_image, ignore_index=ignore_index, from_logits=mode == "softmax"
        )
    elif mode == "hinge":
        groups = hinge_errors(x, target, per_image=per_image, ignore_index=ignore_index)
    else:
        groups = sigmoid_errors(
            x, target, per_image=per_image, ignore_index=ignore_index, from_logits=mode == "sigmoid"
        )
    losses = lovasz_extension(groups.errors, groups.fg, groups.valid, bins=bins, bounded=bounded)
    return losses.view(shape), groups.fg.any(dim=1).view(shape), _has_valid(groups)


def lovasz_softmax(
    input: Tensor,
    target: Tensor,
    *,
    classes: ClassSelection = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    weight: Tensor | Sequence[float] | None = None,
    from_logits: bool = True,
    bins: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Lovász-Softmax loss: a convex surrogate of ``1 - IoU`` for multi-class segmentation.

    For every class :math:`c` the pixel errors are :math:`e_i = |1[y_i = c] - p_{i,c}|`, with :math:`p`
    the softmax of ``input`` over dim 1.  With the errors sorted decreasingly, :math:`e_{\pi_1} \ge
    e_{\pi_2} \ge \dots`, the class loss is the Lovász extension of the Jaccard loss
    :math:`\Delta_c(M) = |M| / |G_c \cup M|` (:math:`G_c`: the pixels labelled :math:`c`):

    .. math::
        L_c(e) = \sum_k e_{\pi_k} \big(\Delta_c(\{\pi_1..\pi_k\}) - \Delta_c(\{\pi_1..\pi_{k-1}\})\big).

    It is convex and piecewise linear in :math:`e`, and at 0/1 predictions it equals ``1 - IoU_c``.  The
    loss averages :math:`L_c` over the selected classes, with optional weights:
    :math:`\sum_c w_c L_c / \sum_c w_c`.

    Args:
        input: ``[B, C, *spatial]`` scores (any number of spatial dims, also none).  Logits by default;
            probabilities with ``from_logits=False``.  float16/bfloat16 are computed in float32.
        target: ``[B, *spatial]`` integer class ids in ``[0, C)`` (or ``ignore_index``).
        classes: ``"present"`` (classes that occur in the valid labels of each group), ``"all"``, or a
            sequence of class ids.
        per_image: ``True``: the loss of each image separately, averaged over images (images with no
            valid pixel or no selected class are skipped).  ``False``: all pixels of the batch form one
            set per class (a proxy for the dataset IoU).
        ignore_index: label of pixels that count nowhere.
        weight: ``[C]`` non-negative per-class weights.
        from_logits: whether ``input`` holds logits (softmax taken inside) or probabilities.
        bins: ``None`` for the exact engine (a sort); an int for the binned engine (see
            :mod:`lovasz.engine`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.  ``"none"`` returns ``[B]`` per-image losses when
            ``per_image`` (0 for skipped images), else ``[C]`` weighted per-class losses ``w_c L_c``
            (0 for classes that are not selected).

    Returns:
        The loss (float32, or float64 for float64 input).  If no pixel is valid it is 0, with a zero
        gradient that is still connected to ``input``.

    Example:
        >>> import torch, lovasz
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 8, 8))
        >>> loss = lovasz.lovasz_softmax(logits, labels)
        >>> loss.backward()
        >>> onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
        >>> float(lovasz.lovasz_softmax(onehot, labels, from_logits=False))  # perfect prediction
        0.0
    """
    _checks.check_softmax_shapes(input, target)
    _checks.check_reduction(reduction)
    _checks.check_ignore_index(ignore_index)
    _checks.check_bins(bins)
    num_classes = input.shape[1]
    _checks.check_classes(classes, num_classes)
    w = _checks.class_weight(weight, num_classes, input.device)
    value_checks = []
    if not from_logits:
        value_checks.append(
            (((input < 0) | (input > 1)).any(), "input must hold probabilities in [0, 1] when from_logits=False")
        )
    bad_label = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad_label = bad_label & (target != ignore_index)
    hint = "" if ignore_index is None else f" and not ignore_index={ignore_index}"
    value_checks.append(
        (bad_label.any(), f"target has labels outside [0, {num_classes}){hint}; set ignore_index for void labels")
    )
    if w is not None:
        value_checks.append(((w < 0).any() | ~torch.isfinite(w).all(), "weight must be finite and non-negative"))
    _checks.run_value_checks(input, value_checks)

    b = input.shape[0]
    mode = "softmax" if from_logits else "probs"
    x, t = input.reshape(b, num_classes, -1), target.reshape(b, -1)
    with _no_autocast(input):
        losses, present, has_valid = _group_losses(mode, x, t, per_image, ignore_index, bins)
        if classes == "present":
            select = present
        else:
            select = has_valid
            if classes != "all":
                chosen = torch.zeros(num_classes, dtype=torch.bool, device=input.device)
                chosen[torch.as_tensor([int(c) for c in classes], device=input.device)] = True
                select = select & chosen
        return reduce_groups(losses, select, w, reduction)


def _binary_loss(
    kind: str,
    input: Tensor,
    target: Tensor,
    per_image: bool,
    ignore_index: int | None,
    from_logits: bool,
    bins: int | None,
    reduction: str,
) -> Tensor:
    x, t = _checks.binary_layout(input, target)
    _checks.check_reduction(reduction)
    _checks.check_ignore_index(ignore_index)
    _checks.check_bins(bins)
    value_checks = []
    if not from_logits:
        value_checks.append(
            (((x < 0) | (x > 1)).any(), "input must hold probabilities in [0, 1] when from_logits=False")
        )
    bad = (t != 0) & (t != 1)
    if ignore_index is not None:
        bad = bad & (t != ignore_index)
    hint = "" if ignore_index is None else f" or ignore_index={ignore_index}"
    value_checks.append((bad.any(), f"target must contain only 0 and 1{hint} for a binary loss"))
    _checks.run_value_checks(x, value_checks)

    mode = kind if kind == "hinge" or from_logits else "sigmoid_probs"
    with _no_autocast(x):
        losses, _, has_valid = _group_losses(mode, x, t, per_image, ignore_index, bins)
        return reduce_groups(losses, has_valid, None, reduction)


def lovasz_hinge(
    input: Tensor,
    target: Tensor,
    *,
    per_image: bool = True,
    ignore_index: int | None = None,
    bins: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Lovász hinge loss for binary (and multi-label) segmentation.

    With labels :math:`y_i \in \{-1, +1\}` (target 1 → +1, 0 → -1) and scores :math:`s_i`, the errors are
    hinge margins :math:`e_i = \max(1 - s_i y_i, 0)`, and the loss is the Lovász extension of the
    Jaccard loss of the foreground class evaluated at :math:`e` (see :func:`lovasz_softmax`).

    Args:
        input: logits, ``[B, *spatial]`` (up to 2 spatial dims) or ``[B, 1, *spatial]`` for binary
            segmentation, or ``[B, C, *spatial]`` (4 or more dims) for multi-label: each channel is its own
            binary problem and the loss is the mean over channels.
        target: 0/1 labels (integer, bool, or float holding 0/1), ``[B, *spatial]`` or the shape of
            ``input``.
        per_image: loss of each image averaged over images (default, as in the paper's binary
            experiments), or one set over the batch.
        ignore_index: label of pixels that count nowhere.
        bins: ``None`` for the exact engine; an int for the binned engine.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per image, or ``[C]`` per channel with
            ``per_image=False``; 0 for entries with no valid pixel).

    Example:
        >>> import torch, lovasz
        >>> logits = torch.randn(4, 1, 16, 16, requires_grad=True)
        >>> masks = torch.randint(0, 2, (4, 16, 16))
        >>> lovasz.lovasz_hinge(logits, masks).backward()
    """
    return _binary_loss("hinge", input, target, per_image, ignore_index, True, bins, reduction)


def lovasz_sigmoid(
    input: Tensor,
    target: Tensor,
    *,
    per_image: bool = False,
    ignore_index: int | None = None,
    from_logits: bool = True,
    bins: int | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Lovász-Sigmoid loss: errors :math:`e_i = |y_i - \sigma(s_i)|` for binary or multi-label targets.

    Same layouts, options and reductions as :func:`lovasz_hinge`; ``from_logits=False`` takes
    probabilities instead of logits.  Bounded errors in ``[0, 1]`` make it the binary analogue of
    :func:`lovasz_softmax`.

    Example:
        >>> import torch, lovasz
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> labels = torch.randint(0, 2, (2, 3, 8, 8))  # 3 independent binary channels
        >>> loss = lovasz.lovasz_sigmoid(logits, labels)
    """
    return _binary_loss("sigmoid", input, target, per_image, ignore_index, from_logits, bins, reduction)
