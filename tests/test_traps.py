"""Smaller traps: numpy integers as options, the combined CE + Lovász loss, value checks under
``torch.compile`` and hinge losses near the float32 range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lovasz
from lovasz.engine import registry

X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
T = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
M = T.clamp(max=1)


# numpy integers are integers: class ids, bins and ignore_index


@pytest.mark.parametrize("np_int", [np.int64, np.int32, np.uint8])
def test_modules_accept_numpy_integers_and_store_plain_ints(np_int):
    m = lovasz.LovaszSoftmaxLoss(classes=[np_int(0), np_int(2)], bins=np_int(64) * 2, ignore_index=np_int(2))
    assert m.classes == (0, 2) and all(type(c) is int for c in m.classes)
    assert type(m.bins) is int and m.bins == 128
    assert type(m.ignore_index) is int and m.ignore_index == 2
    torch.testing.assert_close(m(X, T), lovasz.lovasz_softmax(X, T, classes=[0, 2], bins=128, ignore_index=2))
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
        lovasz.lovasz_softmax(X, T, classes=[np.int64(0), np.int32(2)], ignore_index=np.int64(1), bins=nb),
        lovasz.lovasz_softmax(X, T, classes=[0, 2], ignore_index=1, bins=bins),
    )
    torch.testing.assert_close(
        lovasz.lovasz_hinge(X[:, 0], M, ignore_index=np.int32(1), bins=nb),
        lovasz.lovasz_hinge(X[:, 0], M, ignore_index=1, bins=bins),
    )
    torch.testing.assert_close(
        lovasz.lovasz_sigmoid(X[:, 0], M, bins=nb, backend="torch"), lovasz.lovasz_sigmoid(X[:, 0], M, bins=bins)
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
        lovasz.lovasz_softmax(X, T, **kwargs)


# CrossEntropyLovaszLoss


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int16, torch.int64])
def test_combined_loss_accepts_every_integer_target_dtype(dtype):
    t = T.masked_fill(T == 1, 255).to(dtype)
    t0 = t.clone()
    crit = lovasz.CrossEntropyLovaszLoss(ignore_index=255, weight=[1.0, 2.0, 0.5])
    want = torch.nn.functional.cross_entropy(
        X, T.masked_fill(T == 1, 255), weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=255
    ) + lovasz.lovasz_softmax(X, T.masked_fill(T == 1, 255), ignore_index=255, weight=[1.0, 2.0, 0.5])
    torch.testing.assert_close(crit(X, t), want)
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
    torch.testing.assert_close(crit(X, T), torch.nn.functional.cross_entropy(X, T))  # step 0: no Lovász term
    crit.train()
    crit(X, T)
    crit(X, T)  # two training steps: lambda = 0.5
    crit.eval()
    want = torch.nn.functional.cross_entropy(X, T) + 0.5 * lovasz.lovasz_softmax(X, T, reduction="sum")
    torch.testing.assert_close(crit(X, T), want)


@pytest.mark.parametrize(("warmup_steps", "lovasz_weight"), [(0, 1.0), (5, 1.0), (0, 0.0)])
def test_combined_loss_bad_labels_get_the_lovasz_message(warmup_steps, lovasz_weight):
    # With warm-up the first call has lambda = 0; with lovasz_weight=0 the Lovász term is skipped. Either
    # way the labels get the Lovász message.
    crit = lovasz.CrossEntropyLovaszLoss(warmup_steps=warmup_steps, lovasz_weight=lovasz_weight)
    with pytest.raises(ValueError, match=r"target has labels outside \[0, 3\)"):
        crit(X, T.masked_fill(T == 0, 255))


# Value checks under torch.compile (default backend: inductor)


def test_value_checks_run_under_torch_compile_softmax(monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", "torch")
    torch._dynamo.reset()

    def fn(x, t):
        return lovasz.lovasz_softmax(x, t, bins=None)

    compiled = torch.compile(fn)
    torch.testing.assert_close(compiled(X, T), fn(X, T))
    bad_label = T.clone()
    bad_label[0, 0, 0] = 255  # no ignore_index: eager mode raises ValueError
    with pytest.raises(RuntimeError, match=r"target has labels outside \[0, 3\)"):
        compiled(X, bad_label)
    nan_input = X.clone()
    nan_input[1, 2, 3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="input contains NaN or Inf values"):
        compiled(nan_input, T)


def test_value_checks_run_under_torch_compile_binary(monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", "torch")
    torch._dynamo.reset()

    def fn(x, t):
        return lovasz.lovasz_hinge(x, t, bins=None, ignore_index=255)

    compiled = torch.compile(fn)
    m = M.masked_fill(T == 2, 255)
    torch.testing.assert_close(compiled(X[:, 0], m), fn(X[:, 0], m))
    with pytest.raises(RuntimeError, match="target must contain only 0 and 1 or ignore_index=255"):
        compiled(X[:, 0], m.masked_fill(T == 2, 2))


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


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_native_kernels_check_inputs_under_torch_compile(loss):
    # With the native kernels the loss leaves the NaN/Inf and label checks to their pass 1, compiled or
    # not (Decision.checks_inputs): under torch.compile the custom operator raises the eager ValueError.
    torch._dynamo.reset()
    if loss == "softmax":

        def fn(x, t):
            return lovasz.lovasz_softmax(x, t, bins=lovasz.DEFAULT_BINS, backend="native")

        x, t, bad_value = X, T, 3
    else:

        def fn(x, t):
            return lovasz.lovasz_hinge(x, t, bins=lovasz.DEFAULT_BINS, backend="native")

        x, t, bad_value = X[:, 0], M, 2
    compiled = torch.compile(fn)
    torch.testing.assert_close(compiled(x, t), fn(x, t))
    bad = t.clone()
    bad[0, 0, 0] = bad_value
    with pytest.raises(ValueError, match=rf"\(found {bad_value}\)"):
        compiled(x, bad)
    nan_input = x.clone()
    nan_input[(1,) * x.dim()] = float("nan")
    with pytest.raises(ValueError, match="input contains NaN or Inf values"):
        compiled(nan_input, t)
