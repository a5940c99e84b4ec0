"""Edge cases, dtypes, layouts, determinism, and the promise not to modify inputs."""

from __future__ import annotations

import pytest
import torch

import lovasz


def test_one_pixel_and_one_class():
    x = torch.tensor([[[2.0], [-1.0]]], requires_grad=True)  # [B=1, C=2, N=1]
    loss = lovasz.lovasz_softmax(x, torch.tensor([[0]]))
    p0 = torch.softmax(x.detach()[0, :, 0], 0)[0]
    # One pixel: class 0 present, error 1 - p0, weight 1 (D goes from 0 to 1).
    assert loss.item() == pytest.approx(1 - p0.item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    one_class = lovasz.lovasz_softmax(torch.randn(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    assert one_class.item() == 0.0  # softmax over one class is 1 everywhere


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_with_connected_zero_gradient(per_image, reduction):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.full((2, 4, 4), 255)
    loss = lovasz.lovasz_softmax(x, t, ignore_index=255, per_image=per_image, reduction=reduction)
    assert torch.count_nonzero(loss) == 0
    assert loss.requires_grad
    loss.sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0
    h = torch.randn(2, 4, 4, requires_grad=True)
    hl = lovasz.lovasz_hinge(h, t, ignore_index=255, per_image=per_image, reduction=reduction)
    hl.sum().backward()
    assert torch.count_nonzero(hl) == 0 and torch.count_nonzero(h.grad) == 0


def test_ignored_image_is_skipped_not_averaged_in():
    x = torch.randn(2, 3, 4, 4)
    t = torch.randint(0, 3, (2, 4, 4))
    t[1] = 255
    both = lovasz.lovasz_softmax(x, t, ignore_index=255, per_image=True)
    first = lovasz.lovasz_softmax(x[:1], t[:1], per_image=True)
    assert both.item() == pytest.approx(first.item(), abs=1e-6)
    none = lovasz.lovasz_softmax(x, t, ignore_index=255, per_image=True, reduction="none")
    assert none.shape == (2,) and none[1].item() == 0.0


def test_reduction_none_shapes_and_unselected_classes():
    x = torch.randn(3, 4, 5, 5)
    t = torch.randint(0, 2, (3, 5, 5))  # classes 2 and 3 absent
    per_class = lovasz.lovasz_softmax(x, t, reduction="none")
    assert per_class.shape == (4,) and per_class[2] == 0 and per_class[3] == 0 and per_class[0] > 0
    assert lovasz.lovasz_softmax(x, t, per_image=True, reduction="none").shape == (3,)
    total = lovasz.lovasz_softmax(x, t, reduction="sum")
    assert total.item() == pytest.approx(per_class.sum().item(), abs=1e-6)
    assert lovasz.lovasz_hinge(x[:, :1], t, per_image=False, reduction="none").shape == (1,)
    assert lovasz.lovasz_sigmoid(x, t[:, None].expand(3, 4, 5, 5), per_image=False, reduction="none").shape == (4,)


def test_weights_give_weighted_mean():
    x = torch.randn(2, 3, 6, 6)
    t = torch.randint(0, 3, (2, 6, 6))
    per_class = lovasz.lovasz_softmax(x, t, classes="all", reduction="none")
    w = torch.tensor([1.0, 3.0, 0.5])
    weighted = lovasz.lovasz_softmax(x, t, classes="all", weight=w)
    assert weighted.item() == pytest.approx(((per_class * w).sum() / w.sum()).item(), abs=1e-6)


def test_class_list_selects_those_classes():
    x = torch.randn(2, 4, 6, 6)
    t = torch.randint(0, 4, (2, 6, 6))
    per_class = lovasz.lovasz_softmax(x, t, classes="all", reduction="none")
    chosen = lovasz.lovasz_softmax(x, t, classes=[1, 3])
    assert chosen.item() == pytest.approx(((per_class[1] + per_class[3]) / 2).item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    x = torch.randn(2, 5, 16, 16).to(dtype).requires_grad_(True)
    t = torch.randint(0, 5, (2, 16, 16))
    loss = lovasz.lovasz_softmax(x, t)
    assert loss.dtype == torch.float32
    ref = lovasz.lovasz_softmax(x.detach().float(), t)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("bins", [None, 1024])
def test_under_autocast(bins):
    """Under autocast the loss is still computed, and returned, in float32."""
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    x = torch.randn(2, 2, 8, 8)
    t = torch.randint(0, 4, (2, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        loss = lovasz.lovasz_softmax(logits, t, bins=bins)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    ref = lovasz.lovasz_softmax(logits.detach().float(), t, bins=bins)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hinge = lovasz.lovasz_hinge(conv(x)[:, 0], (t > 1).long(), bins=bins)
    assert hinge.dtype == torch.float32


def test_channels_last_and_non_contiguous_inputs():
    x = torch.randn(2, 4, 8, 8)
    t = torch.randint(0, 4, (2, 8, 8))
    ref = lovasz.lovasz_softmax(x, t, per_image=True)
    cl = x.to(memory_format=torch.channels_last).requires_grad_(True)
    assert lovasz.lovasz_softmax(cl, t, per_image=True).item() == pytest.approx(ref.item(), abs=1e-6)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert lovasz.lovasz_softmax(transposed, t, per_image=True).item() == pytest.approx(ref.item(), abs=1e-6)


def test_deterministic_and_inputs_untouched():
    x = torch.randn(2, 3, 8, 8)
    x[:, :, :4] = 0.25  # many ties
    t = torch.randint(0, 3, (2, 8, 8))
    t[0, 0] = 255
    x0, t0 = x.clone(), t.clone()
    grads = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        lovasz.lovasz_softmax(xi, t, ignore_index=255, weight=[1.0, 2.0, 3.0]).backward()
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
    lovasz.lovasz_hinge(x[:, 0], t.clamp(max=1), ignore_index=255)
    assert torch.equal(x, x0) and torch.equal(t, t0)


# Hinge near the float32 range


def test_hinge_of_huge_logits_is_finite_for_one_group():
    x = torch.tensor([[3e38, -3e38]], requires_grad=True)
    t = torch.tensor([[0, 1]])
    for bins in (None, 4096):
        loss = lovasz.lovasz_hinge(x, t, bins=bins)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(3e38, rel=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("bins", [None, 4096])
def test_hinge_mean_of_huge_losses_does_not_overflow(bins):
    x = torch.tensor([[3e38, -3e38]] * 2)
    t = torch.tensor([[0, 1]] * 2)
    loss = lovasz.lovasz_hinge(x, t, bins=bins)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(3e38, rel=1e-6)
