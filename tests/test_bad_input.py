"""Every bad input raises a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch

import lovasz
from conftest import CPU_BACKENDS

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
        (lambda: lovasz.lovasz_softmax(X, T + 1), ValueError, r"target has labels outside \[0, 3\).*\(found 3\)"),
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
        (lambda: lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1) * 0.5), ValueError, r"only 0 and 1.*\(found 0.5\)"),
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


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: lovasz.LovaszSoftmaxLoss(classes=[1.5]), TypeError, "classes must contain integer class ids"),
        (lambda: lovasz.LovaszSoftmaxLoss(classes=[True]), TypeError, "classes must contain integer class ids"),
        (lambda: lovasz.LovaszSoftmaxLoss(classes=[]), ValueError, "classes is an empty sequence"),
        (lambda: lovasz.LovaszSoftmaxLoss(classes="some"), ValueError, "classes must be 'present', 'all'"),
        (lambda: lovasz.LovaszSoftmaxLoss(classes=3), TypeError, "classes must be 'present', 'all'"),
        (lambda: lovasz.LovaszSoftmaxLoss(classes=[0, -1]), ValueError, "class id -1 in classes is negative"),
        (lambda: lovasz.LovaszSoftmaxLoss(bins=0), ValueError, "bins must be at least 64"),
        (lambda: lovasz.LovaszHingeLoss(bins=0), ValueError, "bins must be at least 64"),
        (lambda: lovasz.LovaszSigmoidLoss(bins=256.0), TypeError, "bins must be None"),
        (lambda: lovasz.LovaszSoftmaxLoss(reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: lovasz.LovaszSigmoidLoss(reduction="avg"), ValueError, "reduction must be one of"),
        (
            lambda: lovasz.LovaszSoftmaxLoss(weight=[1.0, -1.0, 1.0]),
            ValueError,
            "weight must be finite and non-negative",
        ),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=[1.0, float("nan")]), ValueError, "weight must be finite"),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=[1.0, float("inf")]), ValueError, "weight must be finite"),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=[[1.0, 2.0]]), ValueError, "weight must be a 1-D tensor"),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=[]), ValueError, "weight must be a 1-D tensor"),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=torch.ones(3, dtype=torch.complex64)), TypeError, "real-valued"),
        (lambda: lovasz.LovaszSoftmaxLoss(ignore_index=1.5), TypeError, "ignore_index must be an int or None"),
        (lambda: lovasz.LovaszHingeLoss(ignore_index=True), TypeError, "ignore_index must be an int or None"),
        (lambda: lovasz.LovaszSoftmaxLoss(backend="gpu"), ValueError, "backend must be one of"),
        (lambda: lovasz.CrossEntropyLovaszLoss(classes=[1.5]), TypeError, "classes must contain integer"),
        (lambda: lovasz.CrossEntropyLovaszLoss(weight=[1.0, -1.0]), ValueError, "non-negative"),
    ],
)
def test_modules_check_their_arguments_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: lovasz.LovaszSoftmaxLoss(classes=[0, 3])(X, T), ValueError, "class id 3 in classes is outside"),
        (lambda: lovasz.LovaszSoftmaxLoss(weight=[1.0, 2.0])(X, T), ValueError, r"length C=3"),
    ],
)
def test_module_checks_that_need_the_input_run_at_call_time(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda v: lovasz.LovaszSoftmaxLoss(per_image=v), "per_image"),
        (lambda v: lovasz.LovaszSoftmaxLoss(from_logits=v), "from_logits"),
        (lambda v: lovasz.LovaszHingeLoss(per_image=v), "per_image"),
        (lambda v: lovasz.LovaszSigmoidLoss(per_image=v), "per_image"),
        (lambda v: lovasz.LovaszSigmoidLoss(from_logits=v), "from_logits"),
        (lambda v: lovasz.CrossEntropyLovaszLoss(per_image=v), "per_image"),
        (lambda v: lovasz.lovasz_softmax(X, T, from_logits=v), "from_logits"),
        (lambda v: lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1), from_logits=v), "from_logits"),
    ],
)
@pytest.mark.parametrize("value", ["yes", 1, 0, None, torch.tensor(True)])
def test_flags_must_be_bools(make, name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        make(value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: lovasz.lovasz_softmax(X, T, per_image="yes"),
        lambda: lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1), per_image=1),
        lambda: lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1), per_image="no"),
    ],
)
def test_function_per_image_must_be_a_bool(call):
    with pytest.raises(TypeError, match="per_image must be True or False"):
        call()


def _native_built() -> bool:
    from lovasz.engine import registry

    return registry.native_built()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss", ["softmax", "softmax_probs", "hinge", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_binned_engine_refuses_nonfinite_scores_anywhere(backend, loss, per_image, bad):
    # The native kernels refuse NaN/Inf in pass 1 (the loss's own check then skips its pass over the
    # input; Decision.checks_inputs): every backend must refuse one bad score wherever it is, in the
    # first or last image, block or pass-1 chunk, with the same message.
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 37, 41) if loss.startswith("softmax") else (3, 37, 41)
    x = torch.randn(shape, generator=g)
    if loss == "softmax_probs":
        x = x.softmax(1)
    t = torch.randint(0, 4 if loss.startswith("softmax") else 2, (3, 37, 41), generator=g)
    for where in [(0,) * len(shape), tuple(s - 1 for s in shape), (1, *(s // 2 for s in shape[1:]))]:
        y = x.clone()
        y[where] = bad
        kw = dict(bins=lovasz.DEFAULT_BINS, per_image=per_image, backend=backend)
        # (An infinite probability is also outside [0, 1]; the native path names that first.)
        match = "NaN or Inf" if loss != "softmax_probs" or bad != bad else r"NaN or Inf|probabilities in \[0, 1\]"
        with pytest.raises(ValueError, match=match):
            if loss.startswith("softmax"):
                lovasz.lovasz_softmax(y, t, from_logits=loss == "softmax", **kw)
            else:
                getattr(lovasz, f"lovasz_{loss}")(y, t, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("loss", ["softmax", "softmax_probs", "hinge", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_binned_engine_refuses_bad_labels_anywhere(backend, loss, per_image, ignore_index):
    # As above for labels (the native kernels check them in pass 1 too): one bad label, wherever it is,
    # is refused with the message that names it; ignore_index is not a bad label.
    g = torch.Generator().manual_seed(1)
    softmax = loss.startswith("softmax")
    shape = (3, 4, 37, 41) if softmax else (3, 37, 41)
    x = torch.randn(shape, generator=g)
    if loss == "softmax_probs":
        x = x.softmax(1)
    t = torch.randint(0, 4 if softmax else 2, (3, 37, 41), generator=g)
    if ignore_index is not None:
        t[0, 3, 3] = t[2, 36, 40] = ignore_index
    kw = dict(bins=lovasz.DEFAULT_BINS, per_image=per_image, backend=backend, ignore_index=ignore_index)

    def call(target):
        if softmax:
            return lovasz.lovasz_softmax(x, target, from_logits=loss == "softmax", **kw)
        return getattr(lovasz, f"lovasz_{loss}")(x, target, **kw)

    assert torch.isfinite(call(t))
    for where in [(0, 0, 0), (2, 36, 40), (1, 18, 20)]:
        for value in [-1, 4 if softmax else 2, 254]:
            u = t.clone()
            u[where] = value
            with pytest.raises(ValueError, match=rf"\(found {value}\)"):
                call(u)


@pytest.mark.skipif(not _native_built(), reason="the native kernels were not built")
def test_native_kernels_report_a_nan_before_bad_labels_of_another_image():
    # Pass 1 flags each unit (an image, per image); a NaN in one image and a bad label in another must
    # give the NaN message, as the loss's own checks would (NaN first).
    x = torch.randn(2, 3, 8, 8)
    t = torch.randint(0, 3, (2, 8, 8))
    x[1, 0, 4, 4] = float("nan")
    t[0, 2, 2] = 5
    with pytest.raises(ValueError, match="NaN or Inf"):
        lovasz.lovasz_softmax(x, t, bins=lovasz.DEFAULT_BINS, per_image=True, backend="native")


@pytest.mark.skipif(not _native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_with_native_kernels_the_loss_makes_no_passes_of_its_own_for_nan_and_labels(loss, monkeypatch):
    # The README's promise: where the native kernels run, the NaN/Inf and label checks are theirs, and the
    # loss's own predicates (a pass over input, a pass over target) are not evaluated; elsewhere they are.
    from lovasz import _checks

    calls = []
    for name in ("nonfinite_flag", "labels_out_of_range", "labels_not_binary"):
        real = getattr(_checks, name)
        monkeypatch.setattr(_checks, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    x = torch.randn(2, 3, 8, 8) if loss == "softmax" else torch.randn(2, 8, 8)
    t = torch.randint(0, 3 if loss == "softmax" else 2, (2, 8, 8))
    fn = lovasz.lovasz_softmax if loss == "softmax" else lovasz.lovasz_hinge
    fn(x, t, bins=lovasz.DEFAULT_BINS, backend="native")
    assert calls == []
    fn(x, t, bins=lovasz.DEFAULT_BINS, backend="torch")
    assert "nonfinite_flag" in calls and len(calls) == 2
