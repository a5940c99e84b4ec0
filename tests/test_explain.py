"""lovasz.explain: the engine and backend a call would use, where the choice came from, and why the other
backends could not serve it; the same decision as the loss's."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import lovasz
from lovasz.engine import backends, registry

X = torch.randn(2, 3, 6, 6)
T = torch.randint(0, 3, (2, 6, 6))
AUTO_CPU = "native" if registry.native_built() else "torch"


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_exact_engine_by_default():
    e = lovasz.explain(X)
    assert (e.engine, e.backend, e.source) == ("exact", "torch", "automatic")
    assert set(e.rejected) == {"native", "triton"}
    assert all("binned engine only" in " ".join(reasons) for reasons in e.rejected.values())
    assert str(e).startswith("exact engine, backend 'torch' (automatic choice)")


def test_automatic_binned_choice_on_the_cpu_and_the_reasons_of_the_others():
    e = lovasz.explain(X, bins=256)
    assert (e.engine, e.backend, e.source) == ("binned", AUTO_CPU, "automatic")
    assert any("need a CUDA device" in r for r in e.rejected["triton"])
    assert "triton: the input is on cpu" in str(e)
    if AUTO_CPU == "native":
        assert e.rejected["torch"] == []  # could serve it, comes later in the order
        assert "torch: could serve the call, not chosen" in str(e)


def test_source_argument_then_environment(monkeypatch):
    assert lovasz.explain(X, bins=256, backend="torch").source == "argument"
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    e = lovasz.explain(X, bins=256)
    assert (e.backend, e.source) == ("torch", "environment")
    assert lovasz.explain(X, bins=None).source == "automatic"  # the exact engine reads no environment
    assert lovasz.explain(X).engine == "binned"  # bins="auto": a backend asked for runs its binned engine


def test_float64_and_every_loss():
    e = lovasz.explain(X.double(), bins=256)
    assert e.backend == "torch"
    assert any("float64" in r for r in e.rejected["native"])
    for loss in ("softmax", "hinge", "sigmoid"):
        assert lovasz.explain(X, loss=loss, bins=256).backend == AUTO_CPU
    assert lovasz.explain(X, loss="sigmoid", from_logits=False, bins=256).backend == AUTO_CPU


def test_requests_that_cannot_be_served_raise_as_the_loss_does():
    with pytest.raises(lovasz.BackendNotSupportedError, match="binned engine only"):
        lovasz.explain(X, bins=None, backend="native")
    with pytest.raises(lovasz.BackendNotSupportedError, match="need a CUDA device"):
        lovasz.explain(X, bins=256, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        lovasz.explain(X, bins=256, backend="cuda")
    with pytest.raises(ValueError, match="loss must be one of"):
        lovasz.explain(X, loss="dice")
    with pytest.raises(ValueError, match="takes logits"):
        lovasz.explain(X, loss="hinge", from_logits=False)


def test_the_explained_backend_is_the_one_the_loss_runs(monkeypatch):
    calls: list[str] = []
    real = registry.load_kernels
    monkeypatch.setattr(registry, "load_kernels", lambda name: calls.append(name) or real(name))
    for kwargs in [dict(bins=256), dict(bins=256, backend="torch"), dict()]:
        calls.clear()
        explained = lovasz.explain(X, **kwargs)
        calls.clear()
        lovasz.lovasz_softmax(X, T, **kwargs)
        assert set(calls) == (set() if explained.backend == "torch" else {explained.backend}), kwargs


def test_without_the_native_library(monkeypatch):
    monkeypatch.setitem(registry._INSTALLED, "native", False)
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lovasz.LovaszFallbackWarning)
        e = lovasz.explain(X, bins=256)
    assert e.backend == "torch"
    assert any("not built" in r for r in e.rejected["native"])


# bins="auto", the default: binned where it is faster, exact for float64 and small groups.


def _same_loss_and_grad(fn, x, t, a: dict, b: dict) -> None:
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = fn(xa, t, **a), fn(xb, t, **b)
    la.backward()
    lb.backward()
    assert torch.equal(la, lb) and torch.equal(xa.grad, xb.grad)


def _threshold(x) -> int:
    """The group size from which bins="auto" runs the binned engine, for the backend that would run it."""
    return registry.REGISTRY[backends.resolve("auto", x, lovasz.DEFAULT_BINS).name].auto_exact_below


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("per_image", [False, True])
def test_auto_bins_is_exact_below_the_backends_group_size_and_binned_above(backend, per_image, monkeypatch):
    if backend == "native" and not registry.native_built():
        pytest.skip("the native kernels were not built")
    if backend == "torch":  # as where the C library was not built: the automatic choice runs PyTorch
        unbuilt = dataclasses.replace(registry.REGISTRY["native"], missing=lambda: ["not built here"])
        monkeypatch.setitem(registry.REGISTRY, "native", unbuilt)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    assert backends.resolve("auto", x0, lovasz.DEFAULT_BINS).name == backend
    side = int(_threshold(x0) ** 0.5)
    assert side * side == _threshold(x0)
    for b, h in [(1, side - 1), (1, side), (2, side // 2 + 1)]:
        x, t = torch.randn(b, 4, h, h, generator=g), torch.randint(0, 4, (b, h, h), generator=g)
        group = h * h * (1 if per_image else b)
        want = None if group < _threshold(x) else lovasz.DEFAULT_BINS
        assert backends.auto_bins("auto", x, per_image=per_image) == want
        assert lovasz.explain(x, per_image=per_image).engine == ("exact" if want is None else "binned")
        kw = dict(per_image=per_image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lovasz.LovaszFallbackWarning)
            _same_loss_and_grad(lovasz.lovasz_softmax, x, t, kw, dict(kw, bins=want))
            _same_loss_and_grad(lovasz.LovaszSoftmaxLoss(**kw), x, t, {}, {})  # the module's default too
        assert lovasz.LovaszSoftmaxLoss(**kw).bins == "auto"


def test_the_native_kernels_pay_from_smaller_groups_than_the_pytorch_engine():
    assert registry.REGISTRY["native"].auto_exact_below < registry.REGISTRY["torch"].auto_exact_below


def test_a_backend_asked_for_gets_its_binned_engine_under_auto():
    small = torch.randn(1, 3, 8, 8)
    assert backends.auto_bins("auto", small, per_image=False) is None
    assert backends.auto_bins("auto", small, per_image=False, backend="torch") == lovasz.DEFAULT_BINS
    assert lovasz.explain(small, backend="torch").engine == "binned"


def test_auto_bins_for_binary_losses_counts_the_channels():
    t = _threshold(torch.randn(1, 1, 8))
    side = int(t**0.5)
    x = torch.randn(2, side, side)  # binary: one group per image of `t` elements
    assert backends.auto_bins("auto", x, per_image=True, channels=1) == lovasz.DEFAULT_BINS
    multi = torch.randn(2, 3, side // 2, side)  # multi-label: 3 groups per image of t / 2
    assert backends.auto_bins("auto", multi, per_image=True, channels=3) is None
    assert backends.auto_bins("auto", multi, per_image=False, channels=3) == lovasz.DEFAULT_BINS
    m = (torch.rand(2, side, side) < 0.3).long()
    _same_loss_and_grad(lovasz.lovasz_hinge, x, m, {}, dict(bins=lovasz.DEFAULT_BINS))
    mm = (torch.rand(2, 3, side // 2, side) < 0.3).long()
    _same_loss_and_grad(lovasz.lovasz_sigmoid, multi, mm, dict(per_image=True), dict(per_image=True, bins=None))


def test_auto_bins_is_exact_for_float64_and_binned_across_processes():
    big = torch.randn(4, 3, 64, 64)
    assert backends.auto_bins("auto", big.double(), per_image=False) is None
    assert lovasz.explain(big.double()).engine == "exact"
    small = torch.randn(1, 3, 8, 8)
    # Ranks hold different local batches: the choice must not depend on them.
    assert backends.auto_bins("auto", small, per_image=False, distributed=True) == lovasz.DEFAULT_BINS
    assert backends.auto_bins("auto", small.double(), per_image=False, distributed=True) is None
    for value in (None, 256, "other"):
        assert backends.auto_bins(value, big, per_image=False) == value


def test_bins_must_be_auto_none_or_an_int():
    with pytest.raises(TypeError, match="bins must be 'auto', None"):
        lovasz.lovasz_softmax(X, T, bins="Auto")
    with pytest.raises(TypeError, match="bins must be 'auto', None"):
        lovasz.LovaszHingeLoss(bins="fast")


def test_explain_takes_the_loss_arguments_and_says_why_the_engine():
    e = lovasz.explain(X, T, ignore_index=255, classes="all", reduction="sum", weight=[1.0, 1.0, 1.0])
    assert e.bins is None and "elements per group, fewer than" in e.engine_reason
    assert e.engine_reason in str(e)
    big = lovasz.explain(torch.randn(8, 3, 64, 64))
    assert big.bins == lovasz.DEFAULT_BINS and "the binned engine (" in big.engine_reason
    assert "float64" in lovasz.explain(X.double()).engine_reason
    assert "process group" in lovasz.explain(X, process_group=object()).engine_reason
    assert lovasz.explain(X, bins=None).engine_reason == "bins=None: the exact engine"
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        lovasz.explain(X, bin=256)


@pytest.mark.parametrize("bad", [X.numpy(), X.tolist()])
def test_input_that_is_no_tensor_is_named(bad):
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        lovasz.lovasz_softmax(bad, T)
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        lovasz.lovasz_hinge(bad, (T == 1).long())
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor"):
        lovasz.explain(bad)
