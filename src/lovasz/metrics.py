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
matrix, concatenation for the per-image counts).

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

import torch
from torch import Tensor

__all__ = ["SegmentationIoU", "confusion_matrix", "intersection_union", "iou_scores"]


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


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``[C, C]`` int64 counts, rows = ground truth, columns = prediction, ignored pixels left out."""
    valid = _valid_flat(pred, target, num_classes, ignore_index)
    idx = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def intersection_union(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-image, per-class intersection and union counts, each ``[B, C]`` int64.

    ``pred`` and ``target`` are ``[B, *spatial]`` class ids."""
    valid = _valid_flat(pred, target, num_classes, ignore_index)
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


def _mean_worst(values: Tensor, fraction: float) -> float:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return float("nan")
    k = max(1, math.ceil(fraction * values.numel()))
    return float(values.sort().values[:k].mean())


def iou_scores(inter: Tensor, union: Tensor, worst_fraction: float = 0.1) -> dict:
    """All IoU summaries from per-image counts ``[N, C]`` (see the module docstring).

    Returns a dict of floats (NaN where nothing occurs) and ``per_class_iou`` (a list, NaN for classes that
    never occur)."""
    inter, union = inter.double(), union.double()
    total_i, total_u = inter.sum(0), union.sum(0)
    per_class = torch.where(total_u > 0, total_i / total_u.clamp_min(1), float("nan"))
    img_iou = torch.where(union > 0, inter / union.clamp_min(1), float("nan"))  # [N, C]
    per_image = torch.nanmean(img_iou, dim=1) if img_iou.numel() else img_iou.new_empty(0)
    class_over_images = torch.nanmean(img_iou, dim=0) if img_iou.numel() else per_class
    worst_class = torch.tensor([_mean_worst(img_iou[:, c], worst_fraction) for c in range(img_iou.shape[1])])
    return {
        "miou_dataset": float(torch.nanmean(per_class)),
        "miou_image": float(torch.nanmean(per_image)) if per_image.numel() else float("nan"),
        "miou_class_image": float(torch.nanmean(class_over_images)),
        "miou_image_worst": _mean_worst(per_image, worst_fraction),
        "miou_class_image_worst": float(torch.nanmean(worst_class)),
        "per_class_iou": per_class.tolist(),
    }


try:
    from torchmetrics import Metric as _Metric

    _HAVE_TORCHMETRICS = True
except ImportError:  # pragma: no cover - the class below then needs torchmetrics
    _Metric = object  # type: ignore[assignment,misc]
    _HAVE_TORCHMETRICS = False


class SegmentationIoU(_Metric):  # type: ignore[misc,valid-type]
    """Accumulating IoU metric (a ``torchmetrics.Metric``): ``update(pred_or_logits, target)``, ``compute()``.

    ``update`` takes class ids ``[B, *spatial]`` or scores ``[B, C, *spatial]`` (argmax taken).  ``compute``
    returns the dict of :func:`iou_scores`.  States: the confusion matrix (summed across processes) and the
    per-image counts (concatenated), so per-image and worst-case metrics are exact under DDP too.

    Example:
        >>> import torch
        >>> from lovasz.metrics import SegmentationIoU
        >>> metric = SegmentationIoU(num_classes=3, ignore_index=255)
        >>> metric.update(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> sorted(metric.compute())[:2]
        ['confusion_matrix', 'miou_class_image']
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int | None = None, worst_fraction: float = 0.1, **kwargs):
        if not _HAVE_TORCHMETRICS:
            raise ImportError("SegmentationIoU needs torchmetrics: pip install torchmetrics (or lovasz[train])")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.worst_fraction = worst_fraction
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("inter", default=[], dist_reduce_fx="cat")
        self.add_state("union", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        self.confmat += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        inter, union = intersection_union(pred, target, self.num_classes, self.ignore_index)
        self.inter.append(inter)
        self.union.append(union)

    def compute(self) -> dict:
        def cat(x):
            if isinstance(x, Tensor):
                return x.reshape(-1, self.num_classes)
            return torch.cat(x) if x else torch.zeros(0, self.num_classes, dtype=torch.long)

        scores = iou_scores(cat(self.inter).cpu(), cat(self.union).cpu(), self.worst_fraction)
        scores["confusion_matrix"] = self.confmat.cpu().tolist()
        return scores
