"""lovasz.explain: the engine and backend a call would use, where the choice came from, and why the other
backends could not serve it; the same decision as the loss's."""

from __future__ import annotations

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
    assert lovasz.explain(X).source == "automatic"  # the exact engine reads no environment


def test_float64_and_every_loss():
    e = lovasz.explain(X.double(), bins=256)
    assert e.backend == "torch"
    assert any("float64" in r for r in e.rejected["native"])
    for loss in ("softmax", "hinge", "sigmoid"):
        assert lovasz.explain(X, loss=loss, bins=256).backend == AUTO_CPU
    assert lovasz.explain(X, loss="sigmoid", from_logits=False, bins=256).backend == AUTO_CPU


def test_requests_that_cannot_be_served_raise_as_the_loss_does():
    with pytest.raises(lovasz.BackendNotSupportedError, match="binned engine only"):
        lovasz.explain(X, backend="native")
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
