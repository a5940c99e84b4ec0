"""The IoU metrics against a direct per-class computation (in Lightning: tests/test_metric_lightning.py; across
processes: tests/test_metrics_ddp.py)."""

from __future__ import annotations

import math

import pytest
import torch

import lovasz
from lovasz.metrics import SegmentationIoU, confusion_matrix, intersection_union, iou_scores


def _naive_iou(pred, target, k, ignore=None):
    valid = torch.ones_like(target, dtype=torch.bool) if ignore is None else target != ignore
    inter = ((pred == k) & (target == k) & valid).sum().item()
    union = (((pred == k) | (target == k)) & valid).sum().item()
    return inter / union if union else math.nan


def _nanmean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


@pytest.mark.parametrize("seed", range(10))
def test_iou_scores_match_direct_definitions(seed):
    g = torch.Generator().manual_seed(seed)
    c, n = 5, 12
    target = torch.randint(0, c, (n, 6, 6), generator=g)
    target[0] = 255
    target[1, :3] = 255
    pred = torch.where(
        torch.rand(n, 6, 6, generator=g) < 0.7, target.clamp(max=c - 1), torch.randint(0, c, (n, 6, 6), generator=g)
    )
    inter, union = intersection_union(pred, target, c, ignore_index=255)
    scores = iou_scores(inter, union, worst_fraction=0.25)
    per_class = [_naive_iou(pred, target, k, 255) for k in range(c)]
    assert scores["miou_dataset"] == pytest.approx(_nanmean(per_class))
    per_image = [_nanmean([_naive_iou(pred[i], target[i], k, 255) for k in range(c)]) for i in range(n)]
    assert scores["miou_image"] == pytest.approx(_nanmean(per_image))
    class_img = [_nanmean([_naive_iou(pred[i], target[i], k, 255) for i in range(n)]) for k in range(c)]
    assert scores["miou_class_image"] == pytest.approx(_nanmean(class_img))
    finite = sorted(v for v in per_image if not math.isnan(v))
    worst = finite[: math.ceil(0.25 * len(finite))]
    assert scores["miou_image_worst"] == pytest.approx(sum(worst) / len(worst))
    cm = confusion_matrix(pred, target, c, ignore_index=255)
    assert cm.sum().item() == (target != 255).sum().item()
    assert torch.equal(cm.diag(), inter.sum(0))


def test_metric_matches_hard_prediction_loss():
    """Lovász-Softmax at one-hot predictions equals 1 - mIoU over present classes (same conventions)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 8, 8), generator=g)
    pred = torch.randint(0, 4, (3, 8, 8), generator=g)
    onehot = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    loss = lovasz.lovasz_softmax(onehot, target, from_logits=False, classes="all")
    inter, union = intersection_union(pred, target, 4)
    assert loss.item() == pytest.approx(1 - iou_scores(inter, union)["miou_dataset"], abs=1e-6)


def test_segmentation_iou_metric_accumulates_and_resets():
    g = torch.Generator().manual_seed(1)
    metric = SegmentationIoU(num_classes=3, ignore_index=255)
    preds, targets = [], []
    for _ in range(3):
        logits = torch.randn(2, 3, 5, 5, generator=g)
        target = torch.randint(0, 3, (2, 5, 5), generator=g)
        metric.update(logits, target)
        preds.append(logits.argmax(1))
        targets.append(target)
    got = metric.compute()
    inter, union = intersection_union(torch.cat(preds), torch.cat(targets), 3)
    want = iou_scores(inter, union)
    for key in ("miou_dataset", "miou_image", "miou_class_image", "miou_image_worst", "miou_class_image_worst"):
        assert got[key] == pytest.approx(want[key])
    metric.reset()
    metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert metric.compute()["miou_dataset"] == 1.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shape"):
        intersection_union(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="outside"):
        intersection_union(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), 7), 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long), 3)
