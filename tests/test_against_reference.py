"""Exact losses vs. the independent float64 reference, on hundreds of random cases covering every option."""

from __future__ import annotations

import random

import pytest
import torch

import lovasz
from reference import binary_ref, softmax_ref

SOFTMAX_CASES = 240
BINARY_CASES = 160


def _softmax_case(seed: int):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    b = rng.randint(1, 3)
    c = rng.randint(1, 5)
    spatial = rng.choice([(), (7,), (4, 5), (2, 3, 4)])
    scale = rng.choice([0.1, 1.0, 5.0])
    logits = torch.randn((b, c, *spatial), generator=g) * scale
    target = torch.randint(0, c, (b, *spatial), generator=g)
    ignore_index = rng.choice([None, 255, -1, 0])
    if ignore_index is not None:
        mask = torch.rand(target.shape, generator=g) < rng.choice([0.0, 0.3, 1.0 if seed % 17 == 0 else 0.5])
        target = target.masked_fill(mask, ignore_index)
    classes = rng.choice(["present", "all", sorted(rng.sample(range(c), rng.randint(1, c)))])
    weight = None if rng.random() < 0.5 else [rng.uniform(0.1, 3.0) for _ in range(c)]
    kwargs = dict(
        classes=classes,
        per_image=rng.random() < 0.5,
        ignore_index=ignore_index,
        weight=weight,
        reduction=rng.choice(["mean", "sum", "none"]),
    )
    from_logits = rng.random() < 0.8
    if not from_logits:
        logits = torch.softmax(logits, dim=1)
    kwargs["from_logits"] = from_logits
    return logits, target, kwargs


# The random cases include flat [B, C] inputs per image (each row an image of one pixel), which warn.
@pytest.mark.filterwarnings("ignore::lovasz.functional.FlatPerImageWarning")
@pytest.mark.parametrize("seed", range(SOFTMAX_CASES))
def test_softmax_matches_reference(seed):
    logits, target, kwargs = _softmax_case(seed)
    x = logits.clone().requires_grad_(True)
    got = lovasz.lovasz_softmax(x, target, **kwargs)
    x64 = logits.double().requires_grad_(True)
    want = softmax_ref(x64, target, **kwargs)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
    if want.requires_grad:
        seed_grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        got.backward(seed_grad.float())
        want.backward(seed_grad)
        torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-4)


def _binary_case(seed: int):
    rng = random.Random(10_000 + seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    b = rng.randint(1, 3)
    layout = rng.choice(["flat", "channel1", "channel1_target1", "multilabel", "nospatial"])
    spatial = rng.choice([(6,), (3, 4)]) if layout == "flat" else rng.choice([(3, 4), (2, 2, 3)])
    c = rng.randint(2, 3) if layout == "multilabel" else 1
    ignore_index = rng.choice([None, 255, -100])
    logits = torch.randn((b, c, *spatial), generator=g) * rng.choice([0.5, 2.0, 4.0])
    target = torch.randint(0, 2, (b, c, *spatial), generator=g)
    if ignore_index is not None:
        mask = torch.rand(target.shape, generator=g) < rng.choice([0.0, 0.4, 1.0 if seed % 13 == 0 else 0.5])
        target = target.masked_fill(mask, ignore_index)
    ref_x, ref_t = logits.reshape(b, c, -1), target.reshape(b, c, -1)
    if layout == "flat":
        x, t = logits[:, 0], target[:, 0]
    elif layout == "channel1":
        x, t = logits, target[:, 0]
    elif layout == "nospatial":
        x, t = logits[:, 0].reshape(b, -1)[:, 0].contiguous(), target[:, 0].reshape(b, -1)[:, 0].contiguous()
        ref_x, ref_t = x.reshape(b, 1, 1), t.reshape(b, 1, 1)
    else:
        x, t = logits, target
    if rng.random() < 0.3 and ignore_index is None:
        t = t.float()  # float 0/1 masks are accepted
    kwargs = dict(
        per_image=rng.random() < 0.5, ignore_index=ignore_index, reduction=rng.choice(["mean", "sum", "none"])
    )
    return x, t, ref_x, ref_t, kwargs


@pytest.mark.parametrize("kind", ["hinge", "sigmoid"])
@pytest.mark.parametrize("seed", range(BINARY_CASES // 2))
def test_binary_matches_reference(kind, seed):
    x, t, ref_x, ref_t, kwargs = _binary_case(seed)
    fn = lovasz.lovasz_hinge if kind == "hinge" else lovasz.lovasz_sigmoid
    xg = x.clone().requires_grad_(True)
    got = fn(xg, t, **kwargs)
    rx = ref_x.double().requires_grad_(True)
    want = binary_ref(kind, rx, ref_t, **kwargs)
    torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
    if want.requires_grad:
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(xg.grad.double().reshape(-1), rx.grad.reshape(-1), atol=1e-5, rtol=1e-4)


def test_sigmoid_from_probabilities_matches_reference():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(2, 1, 5, 5, generator=g)
    target = torch.randint(0, 2, (2, 5, 5), generator=g)
    got = lovasz.lovasz_sigmoid(probs, target, from_logits=False, per_image=True)
    want = binary_ref("sigmoid", probs.reshape(2, 1, -1), target.reshape(2, 1, -1), per_image=True, from_logits=False)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_module_wrappers_match_functions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g)
    t = torch.randint(0, 4, (2, 6, 6), generator=g)
    crit = lovasz.LovaszSoftmaxLoss(per_image=True, weight=[1.0, 2.0, 1.0, 0.5], classes="all")
    assert crit.weight is not None and "weight" in crit.state_dict()
    torch.testing.assert_close(
        crit(x, t), lovasz.lovasz_softmax(x, t, per_image=True, weight=[1.0, 2.0, 1.0, 0.5], classes="all")
    )
    m = t.clamp(max=1)
    torch.testing.assert_close(lovasz.LovaszHingeLoss()(x[:, :1], m), lovasz.lovasz_hinge(x[:, :1], m))
    torch.testing.assert_close(lovasz.LovaszSigmoidLoss()(x[:, :1], m), lovasz.lovasz_sigmoid(x[:, :1], m))
    assert "per_image=True" in repr(crit)
