"""Every bad input raises a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

import lovasz

X = torch.randn(2, 3, 4, 4)
T = torch.randint(0, 3, (2, 4, 4))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: lovasz.lovasz_softmax(X, T[:, :3]), ValueError, "target must have shape"),
        (lambda: lovasz.lovasz_softmax(X, T.float()), TypeError, "target must hold integer class ids"),
        (lambda: lovasz.lovasz_softmax(X, T.bool()), TypeError, "target must hold integer"),
        (lambda: lovasz.lovasz_softmax(X.long(), T), TypeError, "input must be a floating-point"),
        (lambda: lovasz.lovasz_softmax(X[0, 0, 0], T[0, 0]), ValueError, "input must have shape"),
        (lambda: lovasz.lovasz_softmax(X, T + 1), ValueError, r"target has labels outside \[0, 3\)"),
        (lambda: lovasz.lovasz_softmax(X, T - 1), ValueError, "labels outside"),
        (lambda: lovasz.lovasz_softmax(X, T.masked_fill(T == 0, 7), ignore_index=255), ValueError, "ignore_index=255"),
        (lambda: lovasz.lovasz_softmax(X, T, weight=[1.0, 2.0]), ValueError, "weight must be a 1-D tensor"),
        (lambda: lovasz.lovasz_softmax(X, T, weight=[1.0, -2.0, 1.0]), ValueError, "non-negative"),
        (lambda: lovasz.lovasz_softmax(X, T, classes="some"), ValueError, "classes must be"),
        (lambda: lovasz.lovasz_softmax(X, T, classes=[0, 3]), ValueError, "class id 3"),
        (lambda: lovasz.lovasz_softmax(X, T, classes=[]), ValueError, "empty"),
        (lambda: lovasz.lovasz_softmax(X, T, classes=[0.5]), TypeError, "integer class ids"),
        (lambda: lovasz.lovasz_softmax(X, T, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: lovasz.lovasz_softmax(X, T, ignore_index=2.5), TypeError, "ignore_index"),
        (lambda: lovasz.lovasz_softmax(X.masked_fill(X > 1, float("nan")), T), ValueError, "NaN or Inf"),
        (lambda: lovasz.lovasz_softmax(X.masked_fill(X > 1, float("inf")), T), ValueError, "NaN or Inf"),
        (lambda: lovasz.lovasz_softmax(X, T, from_logits=False), ValueError, r"probabilities in \[0, 1\]"),
        (lambda: lovasz.lovasz_softmax(X[:0], T[:0]), ValueError, "input is empty"),
        (lambda: lovasz.lovasz_softmax(X, T.tolist()), TypeError, "target must be a torch.Tensor"),
        (lambda: lovasz.lovasz_softmax(X, T, bins=10), ValueError, "bins must be at least"),
        (lambda: lovasz.lovasz_softmax(X, T, bins=1.5), TypeError, "bins must be"),
        (lambda: lovasz.lovasz_hinge(X[:, 0], T), ValueError, "target must contain only 0 and 1"),
        (lambda: lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1)[:, :2]), ValueError, "does not fit input shape"),
        (lambda: lovasz.lovasz_hinge(X, T.clamp(max=1)), ValueError, "does not fit input shape"),
        (lambda: lovasz.lovasz_sigmoid(X[:, 0].sigmoid() * 2, T.clamp(max=1), from_logits=False), ValueError, "[0, 1]"),
        (lambda: lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1) * 0.5), ValueError, "only 0 and 1"),
        (
            lambda: lovasz.lovasz_hinge(X[:, 0].masked_fill(X[:, 0] > 0, float("nan")), T.clamp(max=1)),
            ValueError,
            "NaN",
        ),
        (lambda: lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1), reduction=None), ValueError, "reduction"),
        (lambda: lovasz.lovasz_hinge(torch.empty(0, 4), torch.empty(0, 4)), ValueError, "input is empty"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_ignore_index_inside_class_range_is_honoured():
    t = T.clone()
    loss = lovasz.lovasz_softmax(X, t, ignore_index=0)
    assert torch.isfinite(loss)
    ref = lovasz.lovasz_softmax(X, t.masked_fill(t == 0, 255), ignore_index=255)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
