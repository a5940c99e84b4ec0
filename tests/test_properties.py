"""Properties of the Lovász losses, checked with hypothesis."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lovasz
from lovasz.engine import lovasz_extension

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def segmentation(draw, max_b=3, max_c=5, max_side=6):
    b = draw(st.integers(1, max_b))
    c = draw(st.integers(2, max_c))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (b, h, w), generator=g)
    pred = torch.randint(0, c, (b, h, w), generator=g)
    return target, pred, c, g


def _iou(pred: torch.Tensor, target: torch.Tensor, k: int) -> float:
    inter = ((pred == k) & (target == k)).sum().item()
    union = ((pred == k) | (target == k)).sum().item()
    return inter / union


@SETTINGS
@given(segmentation(), st.booleans())
def test_hard_predictions_give_one_minus_iou(data, per_image):
    target, pred, c, _ = data
    onehot = torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).float()
    loss = lovasz.lovasz_softmax(onehot, target, from_logits=False, per_image=per_image)
    if per_image:
        per = []
        for i in range(target.shape[0]):
            present = target[i].unique().tolist()
            per.append(sum(1 - _iou(pred[i], target[i], k) for k in present) / len(present))
        want = sum(per) / len(per)
    else:
        present = target.unique().tolist()
        want = sum(1 - _iou(pred, target, k) for k in present) / len(present)
    assert abs(loss.item() - want) < 1e-6


@SETTINGS
@given(segmentation(), st.sampled_from(["softmax", "hinge", "sigmoid"]))
def test_pixel_permutation_invariance(data, kind):
    target, _, c, g = data
    b = target.shape[0]
    logits = torch.randn(b, c, target[0].numel(), generator=g)
    t = target.reshape(b, -1)
    perm = torch.randperm(t.shape[1], generator=g)
    if kind == "softmax":
        fn, x, y = lovasz.lovasz_softmax, logits, t
    else:
        fn = lovasz.lovasz_hinge if kind == "hinge" else lovasz.lovasz_sigmoid
        x, y = logits[:, 0], (t % 2)
    a = fn(x, y, per_image=False)
    p = fn(x[..., perm], y[..., perm], per_image=False)
    assert abs(a.item() - p.item()) < 1e-5


@SETTINGS
@given(segmentation(), st.integers(1, 4))
def test_tie_invariance(data, levels):
    """Heavily tied errors: any reordering of tied pixels (here by permuting them) leaves the value unchanged,
    and the value matches the extension evaluated on an untied copy in the limit of vanishing perturbation."""
    target, _, c, g = data
    b = target.shape[0]
    n = target[0].numel()
    probs = torch.randint(0, levels + 1, (b, c, n), generator=g).float() / levels
    probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-6)
    t = target.reshape(b, -1)
    base = lovasz.lovasz_softmax(probs, t, from_logits=False)
    for _ in range(3):
        perm = torch.randperm(n, generator=g)
        again = lovasz.lovasz_softmax(probs[..., perm], t[..., perm], from_logits=False)
        assert abs(again.item() - base.item()) < 1e-5
    # Tiny perturbations break the ties in arbitrary ways; the value moves by at most their size.
    jitter = (probs + 1e-7 * torch.rand(probs.shape, generator=g)).clamp(0, 1)
    broken = lovasz.lovasz_softmax(jitter, t, from_logits=False)
    assert abs(broken.item() - base.item()) < 1e-5


@SETTINGS
@given(st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_extension_is_convex_in_errors(p, seed, lam):
    g = torch.Generator().manual_seed(seed)
    fg = torch.rand(3, p, generator=g) < 0.4
    e1 = torch.rand(3, p, generator=g, dtype=torch.float64)
    e2 = torch.rand(3, p, generator=g, dtype=torch.float64) * 2
    mid = lovasz_extension(lam * e1 + (1 - lam) * e2, fg)
    chord = lam * lovasz_extension(e1, fg) + (1 - lam) * lovasz_extension(e2, fg)
    assert (mid <= chord + 1e-12).all()


@SETTINGS
@given(segmentation(max_c=2), st.floats(0.0, 1.0))
def test_hinge_is_convex_in_logits(data, lam):
    target, _, _, g = data
    t = target % 2
    x1 = torch.randn(t.shape, generator=g, dtype=torch.float64) * 3
    x2 = torch.randn(t.shape, generator=g, dtype=torch.float64) * 3
    mid = lovasz.lovasz_hinge(lam * x1 + (1 - lam) * x2, t, reduction="none")
    chord = lam * lovasz.lovasz_hinge(x1, t, reduction="none") + (1 - lam) * lovasz.lovasz_hinge(
        x2, t, reduction="none"
    )
    assert (mid <= chord + 1e-12).all()


@SETTINGS
@given(segmentation(max_b=2, max_c=3, max_side=4), st.booleans(), st.sampled_from(["present", "all"]))
def test_softmax_gradcheck_float64(data, per_image, classes):
    target, _, c, g = data
    x = torch.randn((target.shape[0], c, *target.shape[1:]), generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: lovasz.lovasz_softmax(z, target, per_image=per_image, classes=classes), (x,), eps=1e-7, atol=1e-5
    )


@SETTINGS
@given(segmentation(max_b=2, max_c=2, max_side=4), st.sampled_from(["hinge", "sigmoid"]))
def test_binary_gradcheck_float64(data, kind):
    target, _, _, g = data
    t = target % 2
    x = torch.randn(t.shape, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lovasz.lovasz_hinge if kind == "hinge" else lovasz.lovasz_sigmoid
    assert torch.autograd.gradcheck(lambda z: fn(z, t), (x,), eps=1e-7, atol=1e-5)


@SETTINGS
@given(segmentation(), st.sampled_from(["present", "all"]))
def test_per_image_is_mean_of_single_image_calls(data, classes):
    target, _, c, g = data
    x = torch.randn((target.shape[0], c, *target.shape[1:]), generator=g)
    batch = lovasz.lovasz_softmax(x, target, per_image=True, classes=classes)
    singles = [lovasz.lovasz_softmax(x[i : i + 1], target[i : i + 1], classes=classes) for i in range(x.shape[0])]
    assert abs(batch.item() - torch.stack(singles).mean().item()) < 1e-5
    h = lovasz.lovasz_hinge(x[:, 0], target % 2, per_image=True)
    hs = [lovasz.lovasz_hinge(x[i : i + 1, 0], target[i : i + 1] % 2, per_image=False) for i in range(x.shape[0])]
    assert abs(h.item() - torch.stack(hs).mean().item()) < 1e-5
