"""IoU metrics with the same conventions as the losses (``ignore_index``, absent classes).

Everything derives from per-image, per-class intersection and union counts of hard predictions:

* **per-class IoU** and **dataset mIoU** (``miou_dataset``): counts summed over the dataset, IoU per class,
  averaged over classes that occur (union > 0) — the Pascal VOC / Cityscapes number.
* **per-image mIoU** (``miou_image``): for each image, the mean IoU over the classes present in its ground
  truth or prediction (union > 0), then the mean over images.  What ``per_image=True`` optimizes.
* **per-class-over-images mIoU** (``miou_class_image``): for each class, the mean of its per-image IoUs over
  the images where it occurs, then the mean over classes ("fine-grained" mIoU^C of Wang et al., NeurIPS
  2023, *Revisiting Evaluation Metrics for Semantic Segmentation*).
* **worst-case** variants (``miou_image_worst``, ``miou_class_image_worst``): the same means taken over the
  worst ``worst_fraction`` (default 10 %) of images, per class for the latter.

Pixels labelled ``ignore_index`` count nowhere.  :class:`SegmentationIoU` accumulates the counts and is a
``torchmetrics.Metric``, so Lightning and DDP runs synchronise it correctly (sums for the confusion
matrix, concatenation for the per-image counts).  :func:`iou_scores` gives the same summaries as Python
floats from counts.

Example:
    >>> import torch
    >>> from lovasz.metrics import intersection_union, iou_scores
    >>> target = torch.tensor([[[0, 0], [1, 1]]])
    >>> pred = torch.tensor([[[0, 1], [1, 1]]])
    >>> inter, union = intersection_union(pred, target, num_classes=2)
    >>> round(iou_scores(inter, union)["miou_dataset"], 4)   # IoU 1/2 and 2/3
    0.5833
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from . import _checks
from ._checks import _is_integer

__all__ = ["SUMMARIES", "SegmentationIoU", "confusion_matrix", "intersection_union", "iou_scores"]

#: The scalar summaries, in the order :func:`iou_scores` and :meth:`SegmentationIoU.compute` list them.
SUMMARIES = ("miou_dataset", "miou_image", "miou_class_image", "miou_image_worst", "miou_class_image_worst")


def _valid_flat(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} must equal target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("pred and target must hold integer class ids (take pred = logits.argmax(1))")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        raise ValueError(f"target has labels outside [0, {num_classes}) that are not ignore_index={ignore_index}")
    if bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"pred has class ids outside [0, {num_classes})")
    return valid


def _confusion(pred: Tensor, target: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _inter_union(pred: Tensor, target: Tensor, valid: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    b = target.shape[0]
    t = torch.where(valid, target, num_classes).reshape(b, -1).long()
    p = torch.where(valid, pred, num_classes).reshape(b, -1).long()
    offset = torch.arange(b, device=t.device).unsqueeze(1) * (num_classes + 1)
    size = b * (num_classes + 1)
    t_count = torch.bincount((t + offset).flatten(), minlength=size).view(b, -1)[:, :num_classes]
    p_count = torch.bincount((p + offset).flatten(), minlength=size).view(b, -1)[:, :num_classes]
    hit = torch.where(t == p, t, num_classes)
    inter = torch.bincount((hit + offset).flatten(), minlength=size).view(b, -1)[:, :num_classes]
    return inter, t_count + p_count - inter


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``[C, C]`` int64 counts, rows = ground truth, columns = prediction, ignored pixels left out."""
    return _confusion(pred, target, _valid_flat(pred, target, num_classes, ignore_index), num_classes)


def intersection_union(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-image, per-class intersection and union counts, each ``[B, C]`` int64.

    ``pred`` and ``target`` are ``[B, *spatial]`` class ids."""
    return _inter_union(pred, target, _valid_flat(pred, target, num_classes, ignore_index), num_classes)


def _check_worst_fraction(worst_fraction: object) -> float:
    if isinstance(worst_fraction, bool) or not isinstance(worst_fraction, numbers.Real):
        raise TypeError(f"worst_fraction must be a number in (0, 1], got {worst_fraction!r}")
    if not 0 < float(worst_fraction) <= 1:
        raise ValueError(f"worst_fraction must be in (0, 1], got {worst_fraction}")
    return float(worst_fraction)


def _mean_worst(values: Tensor, fraction: float) -> Tensor:
    """``[K]``: for each column of ``values`` ``[N, K]``, the mean of its ``ceil(fraction * n)`` smallest
    non-NaN entries (NaN where a column has none)."""
    n, k = values.shape
    if n == 0:
        return values.new_full((k,), float("nan"))
    valid = ~torch.isnan(values)
    count = valid.sum(0)
    take = torch.ceil(fraction * count.double()).clamp_min(1).long()  # as math.ceil on the same double
    ordered = torch.where(valid, values, math.inf).sort(0).values
    ordered = torch.where(torch.isinf(ordered), 0.0, ordered)  # IoUs are finite: inf marks a NaN
    total = ordered.cumsum(0).gather(0, (take - 1).clamp(max=n - 1).unsqueeze(0)).squeeze(0)
    return torch.where(count > 0, total / take, float("nan"))


def _summaries(inter: Tensor, union: Tensor, worst_fraction: float) -> dict[str, Tensor]:
    """The summaries of :func:`iou_scores` as float64 tensors on the counts' device (no host sync)."""
    inter, union = inter.double(), union.double()
    total_i, total_u = inter.sum(0), union.sum(0)
    per_class = torch.where(total_u > 0, total_i / total_u.clamp_min(1), float("nan"))
    img_iou = torch.where(union > 0, inter / union.clamp_min(1), float("nan"))  # [N, C]
    per_image = torch.nanmean(img_iou, dim=1)  # [N]; NaN for an image where nothing occurs
    class_over_images = torch.nanmean(img_iou, dim=0)  # [C]
    return {
        "miou_dataset": torch.nanmean(per_class),
        "miou_image": torch.nanmean(per_image),
        "miou_class_image": torch.nanmean(class_over_images),
        "miou_image_worst": _mean_worst(per_image.unsqueeze(1), worst_fraction)[0],
        "miou_class_image_worst": torch.nanmean(_mean_worst(img_iou, worst_fraction)),
        "per_class_iou": per_class,
    }


def iou_scores(inter: Tensor, union: Tensor, worst_fraction: float = 0.1) -> dict:
    """All IoU summaries from per-image counts ``[N, C]`` (see the module docstring).

    Returns a dict of Python floats (NaN where nothing occurs) and ``per_class_iou`` (a list, NaN for classes
    that never occur).  :meth:`SegmentationIoU.compute` returns the same values as tensors."""
    scores = _summaries(inter, union, _check_worst_fraction(worst_fraction))
    out: dict[str, Any] = {key: float(scores[key]) for key in SUMMARIES}
    out["per_class_iou"] = scores["per_class_iou"].tolist()
    return out


try:
    from torchmetrics import Metric as _Metric

    _HAVE_TORCHMETRICS = True
except ImportError:  # pragma: no cover - the class below then needs torchmetrics
    _Metric = object  # type: ignore[assignment,misc]
    _HAVE_TORCHMETRICS = False


class SegmentationIoU(_Metric):  # type: ignore[misc,valid-type]
    """Accumulating IoU metric (a ``torchmetrics.Metric``): ``update(pred_or_logits, target)``, ``compute()``.

    Args:
        num_classes: number of classes ``C``.
        ignore_index: label of pixels that count nowhere, or ``None``.
        worst_fraction: the share of images the ``_worst`` summaries average, in ``(0, 1]``.
        class_names: ``C`` names; ``compute()`` then also returns ``iou_<name>`` per class.
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``compute_on_cpu``, ...).

    ``update`` takes class ids ``[B, *spatial]`` or scores ``[B, C, *spatial]`` (argmax taken) and targets
    ``[B, *spatial]``.  ``compute`` returns a dict of tensors on the metric's device:

    * ``miou_dataset``, ``miou_image``, ``miou_class_image``, ``miou_image_worst``,
      ``miou_class_image_worst``: 0-d float32 (NaN where nothing occurred);
    * ``iou_<name>`` for each of ``class_names``: 0-d float32 (only with ``class_names``);
    * ``per_class_iou``: ``[C]`` float32, NaN for classes that never occurred;
    * ``confusion_matrix``: ``[C, C]`` int64, rows = ground truth, columns = prediction.

    States: the confusion matrix (summed across processes) and the per-image counts (concatenated), so the
    per-image and worst-case metrics are exact under DDP too.  It works inside ``torchmetrics.MetricCollection``
    (whose ``compute()`` flattens the dict).  Lightning can log only scalars, and only a metric whose
    ``compute()`` returns one tensor can be passed to ``self.log`` itself; so update it in the steps and log
    :meth:`scalars` at the end of the epoch::

        def validation_step(self, batch, batch_idx):
            images, labels = batch
            self.val_iou.update(self(images), labels)

        def on_validation_epoch_end(self):
            self.log_dict(self.val_iou.scalars(prefix="val_"))  # compute() syncs across processes
            self.val_iou.reset()

    Example:
        >>> import torch
        >>> from lovasz.metrics import SegmentationIoU
        >>> metric = SegmentationIoU(num_classes=3, ignore_index=255, class_names=["sky", "road", "car"])
        >>> metric.update(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> values = metric.compute()
        >>> values["per_class_iou"].shape, values["confusion_matrix"].shape
        (torch.Size([3]), torch.Size([3, 3]))
        >>> sorted(metric.scalars(values))[:4]
        ['iou_car', 'iou_road', 'iou_sky', 'miou_class_image']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        worst_fraction: float = 0.1,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        if not _HAVE_TORCHMETRICS:
            raise ImportError("SegmentationIoU needs torchmetrics: pip install torchmetrics (or lovasz[train])")
        if not _is_integer(num_classes):
            raise TypeError(f"num_classes must be an int, got {num_classes!r} ({type(num_classes).__name__})")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if ignore_index is not None and not _is_integer(ignore_index):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        worst_fraction = _check_worst_fraction(worst_fraction)
        if class_names is not None:
            if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
                raise TypeError("class_names must be a sequence of strings")
            class_names = tuple(class_names)
            if len(class_names) != num_classes:
                raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
            if len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names must be unique, got {list(class_names)}")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.worst_fraction = worst_fraction
        self.class_names = class_names
        c = self.num_classes
        self.add_state("confmat", default=torch.zeros(c, c, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("inter", default=[], dist_reduce_fx="cat")
        self.add_state("union", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` class ids ``[B, *spatial]`` or scores ``[B, C, *spatial]``; ``target`` ids.
        An empty batch (``B = 0``) adds nothing; scores holding NaN are refused (their argmax is arbitrary)."""
        for name, value in (("pred", pred), ("target", target)):
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor, got {type(value).__name__}; convert with torch.as_tensor({name})"
                )
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"pred has {pred.shape[1]} score channels for num_classes={self.num_classes}")
            if pred.is_floating_point() and bool(torch.isnan(pred).any()):
                raise ValueError("pred scores contain NaN; the predicted classes would be arbitrary")
            pred = pred.argmax(1) if pred.numel() else pred.new_empty(target.shape, dtype=torch.int64)
        if target.numel() == 0 and pred.shape == target.shape:
            return
        pred, target = _checks.wide_labels(pred), _checks.wide_labels(target)
        valid = _valid_flat(pred, target, self.num_classes, self.ignore_index)
        self.confmat += _confusion(pred, target, valid, self.num_classes)
        inter, union = _inter_union(pred, target, valid, self.num_classes)
        self.inter.append(inter)
        self.union.append(union)

    def _counts(self, state: list[Tensor] | Tensor) -> Tensor:
        if isinstance(state, Tensor):  # after a sync, a list state is one concatenated tensor
            return state.reshape(-1, self.num_classes)
        if state:
            return torch.cat(state)
        return torch.zeros(0, self.num_classes, dtype=torch.long, device=self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """The summaries, per-class IoUs and confusion matrix (see the class docstring)."""
        scores = _summaries(self._counts(self.inter), self._counts(self.union), self.worst_fraction)
        out = {key: scores[key].float() for key in SUMMARIES}
        per_class = scores["per_class_iou"].float()
        if self.class_names is not None:
            out.update({f"iou_{name}": per_class[c] for c, name in enumerate(self.class_names)})
        out["per_class_iou"] = per_class
        out["confusion_matrix"] = self.confmat.clone()
        return out

    def scalars(self, values: Mapping[str, Any] | None = None, prefix: str = "") -> dict[str, Tensor]:
        """The 0-d entries of ``values`` (default: :meth:`compute`), keys prefixed: what Lightning's
        ``self.log_dict`` accepts.  ``values`` may also be a ``MetricCollection``'s ``compute()``."""
        values = self.compute() if values is None else values
        out = {}
        for key, value in values.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                out[prefix + key] = value.reshape(())
            elif isinstance(value, numbers.Number):
                out[prefix + key] = torch.tensor(value)
        return out

    def plot(
        self,
        val: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]] | None = None,
        ax: Any = None,
        *,
        kind: Literal["summary", "per_class", "confusion_matrix"] = "summary",
    ) -> tuple[Any, Any]:
        """Plot a result of :meth:`compute` (default: compute now) or a sequence of them (a curve per value).

        ``kind``: ``"summary"`` the five mIoU summaries; ``"per_class"`` the IoU of each class (named by
        ``class_names``); ``"confusion_matrix"`` (one result only).  Returns ``(fig, ax)`` as torchmetrics'
        ``plot`` does (``fig`` is ``None`` when ``ax`` is given); needs matplotlib.

        Example:
            >>> import torch
            >>> from lovasz.metrics import SegmentationIoU
            >>> metric = SegmentationIoU(num_classes=3)
            >>> metric.update(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
            >>> fig, ax = metric.plot(kind="per_class")
        """
        from torchmetrics.utilities.plot import plot_confusion_matrix, plot_single_or_multi_val

        val = self.compute() if val is None else val
        names = list(self.class_names) if self.class_names is not None else [str(c) for c in range(self.num_classes)]
        if kind == "confusion_matrix":
            if not isinstance(val, Mapping):
                raise ValueError("kind='confusion_matrix' plots one result of compute(), not a sequence")
            return plot_confusion_matrix(val["confusion_matrix"], ax=ax, labels=names)
        if kind == "summary":

            def pick(v: Mapping[str, Tensor]) -> dict[str, Tensor]:
                return {key: torch.as_tensor(v[key]).float() for key in SUMMARIES}
        elif kind == "per_class":

            def pick(v: Mapping[str, Tensor]) -> dict[str, Tensor]:
                per_class = torch.as_tensor(v["per_class_iou"]).float()
                return {name: per_class[c] for c, name in enumerate(names)}
        else:
            raise ValueError(f"kind must be 'summary', 'per_class' or 'confusion_matrix', got {kind!r}")
        data: Any = pick(val) if isinstance(val, Mapping) else [pick(v) for v in val]
        name = "IoU per class" if kind == "per_class" else "mIoU"
        return plot_single_or_multi_val(
            data, ax=ax, higher_is_better=True, lower_bound=0.0, upper_bound=1.0, name=f"{type(self).__name__}: {name}"
        )
