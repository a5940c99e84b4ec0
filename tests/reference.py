"""Independent float64 reference, written from the definitions (not from the production code).

The Jaccard loss of a class is the set function D(M) = |M| / |G ∪ M|.  Its Lovász extension at errors e:
sort e decreasingly, and weight each error by the increment of D as the element joins the set of the
elements before it.  Python loops over images and classes; plain counting, no cumulative-sum tricks.
"""

from __future__ import annotations

import torch


def jaccard_set_loss(mispredicted: set[int], ground_truth: set[int]) -> float:
    union = ground_truth | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_extension_ref(errors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Lovász extension of D at ``errors`` (1-D float64, differentiable), ground truth ``gt`` (1-D bool)."""
    order = sorted(range(errors.numel()), key=lambda i: -float(errors[i].detach()))
    ground_truth = {i for i in range(gt.numel()) if bool(gt[i])}
    prefix: set[int] = set()
    previous = 0.0
    weights = torch.zeros(errors.numel(), dtype=torch.float64)
    for i in order:
        prefix.add(i)
        current = jaccard_set_loss(prefix, ground_truth)
        weights[i] = current - previous
        previous = current
    return (errors * weights).sum()


def softmax_ref(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    classes="present",
    per_image=False,
    ignore_index=None,
    weight=None,
    from_logits=True,
    reduction="mean",
) -> torch.Tensor:
    b, c = logits.shape[:2]
    x = logits.double().reshape(b, c, -1)
    p = torch.softmax(x, dim=1) if from_logits else x
    t = target.reshape(b, -1)
    w = torch.ones(c, dtype=torch.float64) if weight is None else torch.as_tensor(weight, dtype=torch.float64)
    groups = [[i] for i in range(b)] if per_image else [list(range(b))]
    results = []  # (weighted sum, weight sum) per group, or per-class list for batch 'none'
    per_class = torch.zeros(c, dtype=torch.float64)
    for images in groups:
        probs = torch.cat([p[i][:, _valid(t[i], ignore_index)] for i in images], dim=1)
        labels = torch.cat([t[i][_valid(t[i], ignore_index)] for i in images])
        if labels.numel() == 0:
            results.append(None)
            continue
        if classes == "present":
            chosen = sorted({int(v) for v in labels})
        elif classes == "all":
            chosen = list(range(c))
        else:
            chosen = list(classes)
        num = torch.zeros((), dtype=torch.float64)
        den = 0.0
        for k in chosen:
            fg = labels == k
            # |1[y=c] - p| written as 1 - p (fg) or p (bg): equal on [0, 1], and free of abs' kink at 0.
            errors = torch.where(fg, 1 - probs[k], probs[k])
            loss_k = lovasz_extension_ref(errors, fg)
            num = num + w[k] * loss_k
            den += float(w[k])
            if not per_image:
                per_class = per_class.clone()
                per_class[k] = w[k] * loss_k
        results.append(None if den == 0 else (num, den))
    if per_image:
        losses = [r[0] / r[1] if r is not None else torch.zeros((), dtype=torch.float64) for r in results]
        if reduction == "none":
            return torch.stack(losses)
        total = sum(losses, torch.zeros((), dtype=torch.float64))
        if reduction == "sum":
            return total
        counted = sum(r is not None for r in results)
        return total / counted if counted else total * 0
    if reduction == "none":
        return per_class
    r = results[0]
    if r is None:
        return torch.zeros((), dtype=torch.float64)
    return r[0] if reduction == "sum" else r[0] / r[1]


def binary_ref(kind, logits, target, *, per_image, ignore_index=None, from_logits=True, reduction="mean"):
    """Hinge or sigmoid reference; ``logits`` and ``target`` already ``[B, C, N]``."""
    b, c, _ = logits.shape
    x = logits.double()
    groups = [[i] for i in range(b)] if per_image else [list(range(b))]
    out = []
    for images in groups:
        channel_losses = []
        for k in range(c):
            s = torch.cat([x[i, k][_valid(target[i, k], ignore_index)] for i in images])
            y = torch.cat([target[i, k][_valid(target[i, k], ignore_index)] for i in images])
            if y.numel() == 0:
                channel_losses.append(None)
                continue
            fg = y == 1
            if kind == "hinge":
                signs = fg.double() * 2 - 1
                errors = torch.clamp(1 - s * signs, min=0)
            else:
                prob = torch.sigmoid(s) if from_logits else s
                errors = torch.where(fg, 1 - prob, prob)
            channel_losses.append(lovasz_extension_ref(errors, fg))
        out.append(channel_losses)
    zero = torch.zeros((), dtype=torch.float64)
    if per_image:
        per = []
        for ch in out:
            got = [v for v in ch if v is not None]
            per.append(sum(got, zero) / len(got) if got else None)
        if reduction == "none":
            return torch.stack([v if v is not None else zero for v in per])
        total = sum((v for v in per if v is not None), zero)
        if reduction == "sum":
            return total
        n = sum(v is not None for v in per)
        return total / n if n else total
    ch = out[0]
    if reduction == "none":
        return torch.stack([v if v is not None else zero for v in ch])
    got = [v for v in ch if v is not None]
    total = sum(got, zero)
    if reduction == "sum":
        return total
    return total / len(got) if got else total


def _valid(t: torch.Tensor, ignore_index) -> torch.Tensor:
    return torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
