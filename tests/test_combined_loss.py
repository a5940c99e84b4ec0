"""lovasz.CrossEntropyLovaszLoss: its arguments, target dtypes, bad labels and the warm-up of the Lovász
weight (under torch.compile: tests/test_compile.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lovasz

X4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
T4 = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
M4 = T4.clamp(max=1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16, torch.int64])
def test_combined_loss_accepts_every_integer_target_dtype(dtype):
    t = T4.masked_fill(T4 == 1, 255).to(dtype)
    t0 = t.clone()
    crit = lovasz.CrossEntropyLovaszLoss(ignore_index=255, weight=[1.0, 2.0, 0.5])
    want = torch.nn.functional.cross_entropy(
        X4, T4.masked_fill(T4 == 1, 255), weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255
    ) + lovasz.lovasz_softmax(X4, T4.masked_fill(T4 == 1, 255), ignore_index=255, weight=[1.0, 2.0, 0.5])
    torch.testing.assert_close(crit(X4, t), want)
    assert t.dtype == dtype and torch.equal(t, t0)  # the caller's target is untouched


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lovasz_weight": float("nan")}, ValueError, "lovasz_weight must be finite and non-negative"),
        ({"lovasz_weight": float("inf")}, ValueError, "lovasz_weight must be finite"),
        ({"lovasz_weight": -0.5}, ValueError, "non-negative"),
        ({"lovasz_weight": "1"}, TypeError, "lovasz_weight must be a real number"),
        ({"lovasz_weight": True}, TypeError, "lovasz_weight must be a real number"),
        ({"warmup_steps": 1.5}, TypeError, "warmup_steps must be a non-negative int"),
        ({"warmup_steps": True}, TypeError, "warmup_steps must be a non-negative int"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps must be a non-negative int"),
        ({"reduction": "none"}, ValueError, "does not support reduction='none'"),
        ({"from_logits": False}, ValueError, "takes logits"),
        ({"per_image": "yes"}, TypeError, "per_image must be True or False"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ],
)
def test_combined_loss_checks_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lovasz.CrossEntropyLovaszLoss(**kwargs)


def test_combined_loss_numpy_options_and_sum_reduction():
    crit = lovasz.CrossEntropyLovaszLoss(lovasz_weight=np.float32(0.5), warmup_steps=np.int64(2), reduction="sum")
    assert type(crit.lovasz_weight) is float and type(crit.warmup_steps) is int
    crit.eval()
    torch.testing.assert_close(crit(X4, T4), torch.nn.functional.cross_entropy(X4, T4))  # step 0: no Lovász term
    crit.train()
    crit(X4, T4)
    crit(X4, T4)  # two training steps: lambda = 0.5
    crit.eval()
    want = torch.nn.functional.cross_entropy(X4, T4) + 0.5 * lovasz.lovasz_softmax(X4, T4, reduction="sum")
    torch.testing.assert_close(crit(X4, T4), want)


@pytest.mark.parametrize(("warmup_steps", "lovasz_weight"), [(0, 1.0), (5, 1.0), (0, 0.0)])
def test_combined_loss_bad_labels_get_the_lovasz_message(warmup_steps, lovasz_weight):
    # With warm-up the first call has lambda = 0; with lovasz_weight=0 the Lovász term is skipped. Either
    # way the labels get the Lovász message.
    crit = lovasz.CrossEntropyLovaszLoss(warmup_steps=warmup_steps, lovasz_weight=lovasz_weight)
    with pytest.raises(ValueError, match=r"target has labels outside \[0, 3\)"):
        crit(X4, T4.masked_fill(T4 == 0, 255))


def test_combined_loss_and_warmup():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g)
    t = torch.randint(0, 4, (2, 6, 6), generator=g)
    ce = torch.nn.functional.cross_entropy(x, t)
    lv = lovasz.lovasz_softmax(x, t)
    crit = lovasz.CrossEntropyLovaszLoss(lovasz_weight=0.5, warmup_steps=4)
    got = [crit(x, t).item() for _ in range(6)]
    want = [ce.item() + 0.5 * min(1, s / 4) * lv.item() for s in range(6)]
    assert got == pytest.approx(want, abs=1e-6)
    assert int(crit.state_dict()["steps"]) == 6
    crit.eval()
    assert crit(x, t).item() == pytest.approx(ce.item() + 0.5 * lv.item(), abs=1e-6)
    assert int(crit.steps) == 6  # evaluation does not advance the warm-up
    with pytest.raises(ValueError, match="non-negative"):
        lovasz.CrossEntropyLovaszLoss(lovasz_weight=-1.0)
