"""Every bad input raises a clear error naming the argument."""

from __future__ import annotations

import warnings

import numpy as np
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
        (lambda: lovasz.LovaszSigmoidLoss(bins=256.0), TypeError, "bins must be .auto., None"),
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


# Labels compared without wrapping, float binary labels never rounded, on every engine, eager and compiled.

ENGINES = [
    pytest.param(None, "auto", id="exact"),
    pytest.param(lovasz.DEFAULT_BINS, "torch", id="binned-torch"),
    pytest.param(lovasz.DEFAULT_BINS, "auto", id="binned-auto"),
]


def _binary(loss: str):
    return getattr(lovasz, f"lovasz_{loss}")


@pytest.mark.parametrize(("bins", "backend"), ENGINES)
@pytest.mark.parametrize("loss", ["hinge", "sigmoid"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("value", [0.999, 0.5, -0.5, 1.7, float("nan")])
def test_float_binary_targets_other_than_0_1_are_refused(bins, backend, loss, per_image, value):
    x = torch.randn(3, 1, 9, 9)
    t = (torch.rand(3, 1, 9, 9) > 0.5).float()
    t[2, 0, 8, 8] = value
    with pytest.raises(ValueError, match="target must contain only 0 and 1"):
        _binary(loss)(x, t, bins=bins, backend=backend, per_image=per_image)
    # Float 0/1 labels are fine and give the integer labels' loss.
    t[2, 0, 8, 8] = 1.0
    torch.testing.assert_close(
        _binary(loss)(x, t, bins=bins, backend=backend, per_image=per_image),
        _binary(loss)(x, t.long(), bins=bins, backend=backend, per_image=per_image),
    )


@pytest.mark.parametrize(("bins", "backend"), ENGINES)
@pytest.mark.parametrize(
    ("dtype", "label", "ignore_index"), [(torch.int8, -1, 255), (torch.uint8, 255, -1), (torch.int16, -1, 65535)]
)
def test_narrow_integer_targets_do_not_wrap_onto_ignore_index(bins, backend, dtype, label, ignore_index):
    x = torch.randn(2, 3, 6, 6)
    t = torch.randint(0, 3, (2, 6, 6)).to(dtype)
    t[1, 5, 5] = label
    match = rf"labels outside \[0, 3\) and not ignore_index={ignore_index}.*found {label}"
    with pytest.raises(ValueError, match=match):
        lovasz.lovasz_softmax(x, t, ignore_index=ignore_index, bins=bins, backend=backend)
    tb = (t == 1).to(dtype)
    tb[1, 5, 5] = label
    with pytest.raises(ValueError, match=rf"only 0 and 1 or ignore_index={ignore_index}"):
        lovasz.lovasz_hinge(x[:, :1], tb.unsqueeze(1), ignore_index=ignore_index, bins=bins, backend=backend)
    # The same label as ignore_index of the target's own value is ignored, as with int64 targets.
    torch.testing.assert_close(
        lovasz.lovasz_softmax(x, t, ignore_index=label, bins=bins, backend=backend),
        lovasz.lovasz_softmax(x, t.long(), ignore_index=label, bins=bins, backend=backend),
    )


@pytest.mark.parametrize("lovasz_weight", [1.0, 0.0])
def test_combined_loss_refuses_wrapping_labels_with_the_lovasz_message(lovasz_weight):
    t = torch.randint(0, 3, (2, 4, 4)).to(torch.int8)
    t[0, 0, 0] = -1
    crit = lovasz.CrossEntropyLovaszLoss(lovasz_weight=lovasz_weight, ignore_index=255)
    with pytest.raises(ValueError, match=r"labels outside \[0, 3\) and not ignore_index=255"):
        crit(X, t)


@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_wrapping_and_rounded_labels_are_refused_under_torch_compile(loss):
    torch._dynamo.reset()
    if loss == "softmax":
        t = torch.randint(0, 3, (2, 4, 4)).to(torch.int8)
        t[0, 0, 0] = -1

        def fn(x, t):
            return lovasz.lovasz_softmax(x, t, ignore_index=255, bins=lovasz.DEFAULT_BINS)

        x, match = X, r"labels outside \[0, 3\)"
    else:
        t = (torch.rand(2, 4, 4) > 0.5).float()
        t[0, 0, 0] = 0.5

        def fn(x, t):
            return lovasz.lovasz_hinge(x, t, bins=lovasz.DEFAULT_BINS)

        x, match = X[:, 0], "only 0 and 1"
    # A compiled value check raises RuntimeError with the eager message; the native kernels' operator
    # raises the eager ValueError itself.
    with pytest.raises((RuntimeError, ValueError), match=match):
        torch.compile(fn)(x, t)


def test_class_weights_follow_the_input_dtype():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 5, 5), generator=g)
    w = torch.tensor([1 / 3, 0.1, 2 / 7], dtype=torch.float64)
    plain = lovasz.lovasz_softmax(x, t, classes="all", reduction="none")
    weighted = lovasz.lovasz_softmax(x, t, classes="all", reduction="none", weight=w)
    assert weighted.dtype == torch.float64
    torch.testing.assert_close(weighted, plain * w, rtol=1e-15, atol=0)
    module = lovasz.LovaszSoftmaxLoss(classes="all", reduction="none", weight=w)
    torch.testing.assert_close(module(x, t), plain * w, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_combined_loss_with_class_weights_runs_in_every_float_dtype(dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 5, generator=g).to(dtype)
    t = torch.randint(0, 3, (2, 5, 5), generator=g)
    crit = lovasz.CrossEntropyLovaszLoss(weight=[1.0, 2.0, 0.5])
    if dtype != torch.float64:
        crit = crit.to(dtype)  # the weight buffer is cast with the module
    loss = crit(x, t)
    x32 = x.float() if dtype != torch.float64 else x
    w = crit.lovasz.weight.to(x32.dtype)
    expected = torch.nn.functional.cross_entropy(x32, t, weight=w) + lovasz.lovasz_softmax(x, t, weight=w)
    torch.testing.assert_close(loss, expected.to(loss.dtype))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": [0.0, 0.0, 0.0]}, ValueError, "at least one positive entry"),
        ({"weight": "balanced"}, TypeError, "weight must be a 1-D tensor or sequence of per-class numbers"),
        ({"weight": [object(), 1.0, 1.0]}, TypeError, "weight must be a 1-D tensor or sequence"),
        ({"ignore_index": 2**70}, ValueError, "ignore_index must fit in a 64-bit integer"),
        ({"ignore_index": -(2**63) - 1}, ValueError, "ignore_index must fit in a 64-bit integer"),
        ({"bins": 10**9}, ValueError, "bins must be at most 65536"),
    ],
)
def test_unclear_options_get_errors_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        lovasz.lovasz_softmax(X, T, **kwargs)
    with pytest.raises(error, match=match):
        lovasz.LovaszSoftmaxLoss(**kwargs)
    if "weight" not in kwargs:
        with pytest.raises(error, match=match):
            lovasz.lovasz_hinge(X[:, 0], (T == 1).long(), **kwargs)


def test_largest_bins_is_accepted():
    from lovasz._checks import MAX_BINS

    torch.testing.assert_close(
        lovasz.lovasz_softmax(X, T, bins=MAX_BINS), lovasz.lovasz_softmax(X, T), rtol=2e-3, atol=1e-6
    )


def test_iou_metric_refuses_nan_scores_and_numpy_and_skips_empty_batches():
    pytest.importorskip("torchmetrics")
    from lovasz.metrics import SegmentationIoU

    metric = SegmentationIoU(num_classes=3)
    with pytest.raises(ValueError, match="pred scores contain NaN"):
        metric.update(torch.full((2, 3, 4, 4), float("nan")), T)
    with pytest.raises(TypeError, match=r"pred must be a torch.Tensor.*torch.as_tensor"):
        metric.update(T.numpy(), T)
    with pytest.raises(TypeError, match=r"target must be a torch\.Tensor"):
        metric.update(T, T.numpy())
    metric.update(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long))
    metric.update(torch.zeros(0, 4, 4, dtype=torch.long), torch.zeros(0, 4, 4, dtype=torch.long))
    assert int(metric.confmat.sum()) == 0
    metric.update(T, T)
    assert float(metric.compute()["miou_dataset"]) == 1.0
    wrapped = SegmentationIoU(num_classes=3, ignore_index=255)
    t8 = T.to(torch.int8)
    t8[0, 0, 0] = -1
    with pytest.raises(ValueError, match="labels outside"):
        wrapped.update(T, t8)


# numpy integers are integers: class ids, bins and ignore_index

X4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
T4 = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
M4 = T4.clamp(max=1)


@pytest.mark.parametrize("np_int", [np.int64, np.int32, np.uint8])
def test_modules_accept_numpy_integers_and_store_plain_ints(np_int):
    m = lovasz.LovaszSoftmaxLoss(classes=[np_int(0), np_int(2)], bins=np_int(64) * 2, ignore_index=np_int(2))
    assert m.classes == (0, 2) and all(type(c) is int for c in m.classes)
    assert type(m.bins) is int and m.bins == 128
    assert type(m.ignore_index) is int and m.ignore_index == 2
    torch.testing.assert_close(m(X4, T4), lovasz.lovasz_softmax(X4, T4, classes=[0, 2], bins=128, ignore_index=2))
    for cls in (lovasz.LovaszHingeLoss, lovasz.LovaszSigmoidLoss, lovasz.CrossEntropyLovaszLoss):
        mod = cls(bins=np_int(64) * 2, ignore_index=np_int(2))
        assert type(mod.bins if hasattr(mod, "bins") else mod.lovasz.bins) is int
        assert type(mod.ignore_index) is int


def test_module_accepts_a_numpy_array_of_classes():
    assert lovasz.LovaszSoftmaxLoss(classes=np.array([2, 0])).classes == (2, 0)


@pytest.mark.parametrize("bins", [None, 256])
def test_functions_accept_numpy_integers(bins):
    nb = None if bins is None else np.int64(bins)
    torch.testing.assert_close(
        lovasz.lovasz_softmax(X4, T4, classes=[np.int64(0), np.int32(2)], ignore_index=np.int64(1), bins=nb),
        lovasz.lovasz_softmax(X4, T4, classes=[0, 2], ignore_index=1, bins=bins),
    )
    torch.testing.assert_close(
        lovasz.lovasz_hinge(X4[:, 0], M4, ignore_index=np.int32(1), bins=nb),
        lovasz.lovasz_hinge(X4[:, 0], M4, ignore_index=1, bins=bins),
    )
    torch.testing.assert_close(
        lovasz.lovasz_sigmoid(X4[:, 0], M4, bins=nb, backend="torch"), lovasz.lovasz_sigmoid(X4[:, 0], M4, bins=bins)
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bins": np.float64(256)}, TypeError, "bins must be .auto., None"),
        ({"bins": np.bool_(True)}, TypeError, "bins must be .auto., None"),
        ({"bins": True}, TypeError, "bins must be .auto., None"),
        ({"bins": np.int64(8)}, ValueError, "bins must be at least 64"),
        ({"ignore_index": np.float32(255)}, TypeError, "ignore_index must be an int"),
        ({"ignore_index": False}, TypeError, "ignore_index must be an int"),
        ({"ignore_index": torch.tensor(255)}, TypeError, "ignore_index must be an int"),
        ({"classes": [np.float64(1)]}, TypeError, "integer class ids"),
        ({"classes": [np.bool_(True)]}, TypeError, "integer class ids"),
        ({"classes": [np.int64(3)]}, ValueError, "class id 3"),
        ({"classes": np.array([0, 1])}, TypeError, "pass classes=arr.tolist()"),
    ],
)
def test_functions_still_refuse_bools_floats_and_bad_ids(kwargs, error, match):
    with pytest.raises(error, match=match):
        lovasz.lovasz_softmax(X4, T4, **kwargs)


def _points():
    g = torch.Generator().manual_seed(0)
    batch = torch.tensor([0, 0, 2, 1, 2, 2, 0, 1])
    return torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g), batch


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda x, t, b: (x, t, b[:-1]), ValueError, r"batch must have shape \[N\] = \(8,\)"),
        (lambda x, t, b: (x, t, b.float()), TypeError, r"batch must hold integer sample ids.*batch.long\(\)"),
        (lambda x, t, b: (x, t, b.bool()), TypeError, "batch must hold integer sample ids"),
        (lambda x, t, b: (x, t, b.tolist()), TypeError, "batch must be a torch.Tensor"),
        (lambda x, t, b: (x, t, b.view(1, -1)), ValueError, r"batch must have shape \[N\]"),
        (lambda x, t, b: (x, t, b - 1), ValueError, r"negative sample ids \(found -1\)"),
        (lambda x, t, b: (x, t, b * 10**9), ValueError, r"sample id 2000000000 for 8 points.*torch.unique"),
        (lambda x, t, b: (x, t, b.to("meta")), ValueError, "batch is on meta but input is on cpu"),
        (lambda x, t, b: (x.unsqueeze(-1), t.unsqueeze(-1), b), ValueError, r"flat points \[N, C\]"),
    ],
)
@pytest.mark.parametrize("per_image", [True, False])
def test_bad_batch_is_refused(make, error, match, per_image):
    x, t, batch = make(*_points())
    with pytest.raises(error, match=match):
        lovasz.lovasz_softmax(x, t, batch=batch, per_image=per_image)  # checked without per_image too


def test_bad_batch_is_refused_by_the_binary_losses():
    x, t, batch = _points()
    x, t = x[:, 0], (t > 0).long()
    with pytest.raises(ValueError, match=r"batch must have shape \[N\]"):
        lovasz.lovasz_hinge(x, t, batch=batch[:-1])
    with pytest.raises(ValueError, match="flat points"):
        lovasz.lovasz_hinge(x.view(1, 1, -1), t.view(1, 1, -1), batch=batch)
    with pytest.raises(ValueError, match="negative sample ids"):
        lovasz.lovasz_sigmoid(x, t, batch=-batch - 1)
    with pytest.raises(ValueError, match=r"batch must have shape \[N\]"):
        lovasz.LovaszSigmoidLoss(per_image=True)(x, t, batch[:3])
    with pytest.raises(ValueError, match="number the samples 0, 1, 2"):
        lovasz.lovasz_hinge(x, t, batch=batch + (1 << 16), per_image=True)


def test_missing_sample_ids_are_accepted_up_to_a_bound():
    """Ids with gaps are samples without points (loss 0, left out of the mean), up to the number of points
    or 2^16 ids, whichever is larger."""
    x, t, batch = _points()
    gaps = torch.where(batch == 2, (1 << 16) - 1, batch)
    losses = lovasz.lovasz_softmax(x, t, batch=gaps, per_image=True, reduction="none")
    assert losses.shape == (1 << 16,) and torch.count_nonzero(losses[2:-1]) == 0


def test_flat_points_per_image_without_batch_warn():
    x, t, batch = _points()
    with pytest.warns(UserWarning, match=r"flat points \(8, 3\) with per_image=True and no batch="):
        lovasz.lovasz_softmax(x, t, per_image=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lovasz.lovasz_softmax(x, t, per_image=True, batch=batch)
        lovasz.lovasz_softmax(x, t, per_image=False)
