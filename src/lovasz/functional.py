"""Public loss functions: Lovász-Softmax, Lovász hinge and Lovász-Sigmoid.

Each function resolves its engine and backend once (:func:`lovasz.engine.backends.resolve`), then does
three things with that decision: check its inputs (:mod:`lovasz._checks`; the values are left to kernels
that check them as they read them), compute the Lovász loss of every group
(:func:`lovasz.engine.group_losses`: errors of the loss's surrogate, :mod:`lovasz.surrogates`, evaluated
by the decided engine) and reduce the group losses (:mod:`lovasz.reduce`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import _checks
from .engine import group_losses
from .engine.backends import decide
from .reduce import reduce_groups, select_classes
from .surrogates import for_loss
from .types import BackendName, Bins, ClassSelection, Reduction

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["lovasz_hinge", "lovasz_sigmoid", "lovasz_softmax"]


def _sync(process_group):
    """The collectives of a loss over a process group (``None`` for a local loss)."""
    if process_group is None:
        return None
    from .distributed import ProcessSync

    return ProcessSync(process_group)


def _agreed(
    surrogate, num_classes, bins, classes, ignore_index, per_image, reduction, decision, ragged
) -> dict[str, object]:
    """The options every rank of a process group must pass alike (:meth:`ProcessSync.agree`); the backend
    is the one decided, since each runs its own collectives.  ``ragged``: whether ``batch=`` was given."""
    return {
        "loss": surrogate.name, "number of classes": num_classes, "bins": bins, "classes": classes,
        "ignore_index": ignore_index, "per_image": per_image, "reduction": reduction, "backend": decision.name,
        "per-sample groups of batch=": ragged,
    }  # fmt: skip


@contextmanager
def _refusal_told(sync):
    """The loss's input checks: where they fail on this rank of a process group, the other ranks are told
    (:meth:`lovasz.distributed.ProcessSync.agree`) before the error propagates, so that every rank raises
    and none waits in a collective."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        if sync is not None:
            sync.agree({}, refused=exc)
        raise


def _no_autocast(x: Tensor):
    """Losses run in float32 (or float64) whatever autocast is active: sums over millions of pixels and
    Jaccard increments of order 1/p are not safe in float16/bfloat16.  Inputs are upcast explicitly."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def lovasz_softmax(
    input: Tensor,
    target: Tensor,
    *,
    classes: ClassSelection = "present",
    per_image: bool = False,
    ignore_index: int | None = None,
    weight: Tensor | Sequence[float] | None = None,
    from_logits: bool = True,
    bins: Bins = "auto",
    reduction: Reduction = "mean",
    backend: BackendName = "auto",
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
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
            sequence of class ids.  With ``"present"`` the binned engine's native CPU kernels skip the
            absent classes' work entirely (the same value and gradient, bit for bit), which saves most of
            the per-image work where an image holds a few of the classes.
        per_image: ``True``: the loss of each image separately, averaged over images (images with no
            valid pixel or no selected class are skipped).  ``False``: all pixels of the batch form one
            set per class (a proxy for the dataset IoU).
        ignore_index: label of pixels that count nowhere.
        weight: ``[C]`` non-negative per-class weights.
        from_logits: whether ``input`` holds logits (softmax taken inside) or probabilities.
        bins: the engine.  ``"auto"`` (default): the binned engine with ``DEFAULT_BINS`` bins, except
            for float64 input and for groups too small for the binned backend to pay (under 1024
            elements for the native kernels), which take the exact engine
            (:func:`lovasz.engine.backends.auto_bins`; :func:`lovasz.explain` says which and why).
            ``None``: the exact engine (a sort).  An int: the binned engine with that many bins, whose
            loss is within a relative ``1/P`` of the exact one (0.93 % at ``DEFAULT_BINS`` = 4924;
            :mod:`lovasz.engine.histogram`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.  ``"none"`` returns ``[B]`` per-image losses when
            ``per_image`` (0 for skipped images), else ``[C]`` weighted per-class losses ``w_c L_c``
            (0 for classes that are not selected).
        backend: implementation of the binned engine: ``"auto"`` (``LOVASZ_BACKEND`` if set, else Triton
            on CUDA, the native kernels (C, compiled at install) on the CPU, PyTorch otherwise),
            ``"torch"``, ``"native"`` or ``"triton"``.  A backend that cannot serve the call raises
            :class:`lovasz.BackendNotSupportedError` (see :mod:`lovasz.engine.backends`;
            :func:`lovasz.explain` shows the choice).  With ``bins=None`` only ``"auto"``/``"torch"``.
        process_group: a ``torch.distributed`` process group (``torch.distributed.group.WORLD`` for all
            processes): the loss of the union of all ranks' batches, with "present" classes decided over
            it and per-image means over all its images.  Every rank gets the same value; each rank's
            gradient w.r.t. its own ``input`` is ``world_size ×`` its slice of the one-process gradient,
            so that ``DistributedDataParallel``'s gradient averaging gives the one-process gradient.
            Every rank must call the loss (an empty local batch, ``B = 0``, is allowed).  See
            :mod:`lovasz.distributed` for what travels.
        batch: for point clouds and other ragged batches: ``[N]`` integer sample ids of the points of a
            flat ``input`` ``[N, C]`` (target ``[N]``), sorted or not, the ``torch_geometric`` convention.
            With ``per_image=True`` each sample (scan) is an image: its loss is computed on its own
            points and the losses are averaged over the samples with a valid point and a selected class;
            ``reduction="none"`` gives ``[S]`` per-sample losses, ``S = max id + 1`` (a missing id is a
            sample without valid points: 0, skipped in the mean).  With ``per_image=False`` the ids are
            checked and the points form one set per class, as without ``batch``.  No padding: eagerly
            and with at most :data:`lovasz.engine.LOOP_SAMPLES` samples, each sample's points are one
            image (one engine call per sample); otherwise the engines take each (sample, class) pair as
            a group.  Sorted ids cost nothing more; unsorted ones are put in order once (a copy of
            ``input``).  Reading ``S`` synchronises with the device once (a graph break under
            ``torch.compile``).

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
    sync = _sync(process_group)
    surrogate = for_loss("softmax", bool(from_logits))
    ragged = batch is not None and per_image is True
    with _refusal_told(sync):
        decision, bins, unresolved = decide(
            backend, input, bins, surrogate, per_image=per_image, distributed=sync is not None, ragged=ragged
        )
        target = _checks.wide_labels(target) if isinstance(target, Tensor) else target
        w, classes, ignore_index, bins = _checks.check_softmax(
            input, target, classes=classes, ignore_index=ignore_index, weight=weight, from_logits=from_logits,
            bins=bins, reduction=reduction, backend=backend, per_image=per_image, allow_empty=sync is not None,
            kernels_check=sync is None and decision is not None and decision.checks_inputs,
        )  # fmt: skip
        sample, num_samples, in_order = (
            (None, 0, True) if batch is None else _checks.check_batch(batch, input, "[N, C]")
        )
        if unresolved is not None:  # the arguments are valid, but no backend can serve the call
            raise unresolved
    b, c = input.shape[:2]
    n = math.prod(input.shape[2:])
    if input.dim() == 2 and per_image and batch is None:
        warnings.warn(
            f"lovasz_softmax: input is flat points {tuple(input.shape)} with per_image=True and no batch=, so every "
            "point is an image of its own and the loss is a mean of one-point losses; pass batch= (each point's "
            "sample id) for per-sample losses, or per_image=False for the loss over all points",
            FlatPerImageWarning,
            stacklevel=2,
        )
    if sync is not None:
        sync.agree(_agreed(surrogate, c, bins, classes, ignore_index, per_image, reduction, decision, ragged))
    with _no_autocast(input):
        result = group_losses(
            surrogate, input.reshape(b, c, n), target.reshape(b, n),
            per_image=per_image, ignore_index=ignore_index, bins=bins, backend=backend, sync=sync,
            present_only=isinstance(classes, str) and classes == "present", decision=decision,
            sample=sample if ragged else None, num_samples=num_samples, samples_sorted=in_order,
        )  # fmt: skip
        return reduce_groups(result.losses, select_classes(result, classes), w, reduction, sync)


class FlatPerImageWarning(UserWarning):
    """``per_image=True`` on flat points ``[N, C]`` without ``batch=``: each point is an image of its own."""


def _binary_loss(
    input: Tensor,
    target: Tensor,
    *,
    hinge: bool,
    per_image: bool,
    ignore_index: int | None,
    from_logits: bool,
    bins: Bins,
    reduction: str,
    backend: str,
    process_group: ProcessGroup | None,
    batch: Tensor | None,
) -> Tensor:
    sync = _sync(process_group)
    surrogate = for_loss("hinge" if hinge else "sigmoid", bool(from_logits))
    ragged = batch is not None and per_image is True
    flat = batch is not None and isinstance(input, Tensor) and input.dim() == 2  # [N, C] points: C channels
    channels = input.shape[1] if isinstance(input, Tensor) and (input.dim() >= 4 or flat) else 1
    with _refusal_told(sync):
        decision, bins, unresolved = decide(
            backend, input, bins, surrogate, per_image=per_image, channels=channels, distributed=sync is not None,
            ragged=ragged,
        )  # fmt: skip
        target = _checks.wide_labels(target) if isinstance(target, Tensor) else target
        x, t, ignore_index, bins = _checks.check_binary(
            input, target, ignore_index=ignore_index, from_logits=from_logits, bins=bins, reduction=reduction,
            backend=backend, per_image=per_image, allow_empty=sync is not None,
            kernels_check=sync is None and decision is not None and decision.checks_inputs,
        )  # fmt: skip
        sample, num_samples, in_order = (
            (None, 0, True) if batch is None else _checks.check_batch(batch, input, "[N], [N, 1] or [N, C]")
        )
        if flat:  # points [N, C] with [N, C] labels: C channels of one point each (not [B, *spatial])
            x, t = input.reshape(input.shape[0], -1, 1), target.reshape(input.shape[0], -1, 1)
        if unresolved is not None:  # the arguments are valid, but no backend can serve the call
            raise unresolved
    if sync is not None:
        sync.agree(_agreed(surrogate, x.shape[1], bins, "all", ignore_index, per_image, reduction, decision, ragged))
    with _no_autocast(x):
        result = group_losses(
            surrogate,
            x,
            t,
            per_image=per_image,
            ignore_index=ignore_index,
            bins=bins,
            backend=backend,
            sync=sync,
            decision=decision,
            sample=sample if ragged else None,
            num_samples=num_samples,
            samples_sorted=in_order,
        )
        return reduce_groups(result.losses, result.has_valid, None, reduction, sync)


def lovasz_hinge(
    input: Tensor,
    target: Tensor,
    *,
    per_image: bool = True,
    ignore_index: int | None = None,
    bins: Bins = "auto",
    reduction: Reduction = "mean",
    backend: BackendName = "auto",
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
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
        bins: ``"auto"``, ``None`` (exact) or an int (binned), as in :func:`lovasz_softmax`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``[B]`` per image, or ``[C]`` per channel with
            ``per_image=False``; 0 for entries with no valid pixel).
        backend: implementation of the binned engine, as in :func:`lovasz_softmax`.
        process_group: the loss of all ranks' batches together, as in :func:`lovasz_softmax`.
        batch: ``[N]`` sample ids of flat points (input ``[N]`` or ``[N, 1]`` with target ``[N]``, or
            multi-label ``[N, C]`` with target ``[N, C]``): with ``per_image=True`` the loss of each sample
            (``"none"``: ``[S]``), as in :func:`lovasz_softmax`.

    Example:
        >>> import torch, lovasz
        >>> logits = torch.randn(4, 1, 16, 16, requires_grad=True)
        >>> masks = torch.randint(0, 2, (4, 16, 16))
        >>> lovasz.lovasz_hinge(logits, masks).backward()
    """
    return _binary_loss(
        input, target, hinge=True, per_image=per_image, ignore_index=ignore_index, from_logits=True, bins=bins,
        reduction=reduction, backend=backend, process_group=process_group, batch=batch,
    )  # fmt: skip


def lovasz_sigmoid(
    input: Tensor,
    target: Tensor,
    *,
    per_image: bool = False,
    ignore_index: int | None = None,
    from_logits: bool = True,
    bins: Bins = "auto",
    reduction: Reduction = "mean",
    backend: BackendName = "auto",
    process_group: ProcessGroup | None = None,
    batch: Tensor | None = None,
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
    return _binary_loss(
        input, target, hinge=False, per_image=per_image, ignore_index=ignore_index, from_logits=from_logits,
        bins=bins, reduction=reduction, backend=backend, process_group=process_group, batch=batch,
    )  # fmt: skip
