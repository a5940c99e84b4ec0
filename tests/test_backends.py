"""The backend resolver: order, errors for requests it cannot serve, the Triton probe and its fallback.

Kernel failures are simulated through one seam, ``lovasz.engine.backends.load_kernels``: a fake Triton
module whose forward is the numba kernel and whose backward (or forward) raises.  ``TRITON_INTERPRET=1``
makes the CPU count as a Triton device, so the automatic choice considers Triton here.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

import lovasz
from lovasz.engine import backends
from lovasz.engine.backends import BackendNotSupportedError, resolve, triton_probe

numba = pytest.importorskip("numba")
CPU_FUSED = "native" if backends.native_built() else "numba"  # the automatic choice on the CPU
X = torch.randn(2, 3, 6, 6)
T = torch.randint(0, 3, (2, 6, 6))


@pytest.fixture(autouse=True)
def fresh_probe():
    triton_probe.reset()
    yield
    triton_probe.reset()


def test_order_argument_then_environment_then_automatic(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert resolve("auto", X, 256).name == CPU_FUSED  # automatic, on the CPU
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert resolve("auto", X, 256).name == "torch"  # the environment
    assert resolve("numba", X, 256).name == "numba"  # the argument beats the environment
    assert resolve("auto", X, None).name == "torch"  # the exact engine reads no environment
    assert resolve("auto", X.double(), 256).name == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "auto")
    assert resolve("auto", X.double(), 256).name == "torch"  # float64: the automatic choice keeps PyTorch


def test_backend_argument_reaches_the_engine(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    calls = []
    real = backends.load_kernels

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(backends, "load_kernels", spy)
    a = lovasz.lovasz_softmax(X, T, bins=256, backend="torch")
    assert calls == []
    b = lovasz.LovaszSoftmaxLoss(bins=256, backend="numba")(X, T)
    assert calls == ["numba"]
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1), bins=256, backend="numba")
    lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1), bins=256, backend="numba")
    assert calls == ["numba"] * 3


@pytest.mark.parametrize(
    ("backend", "x", "bins", "match"),
    [
        ("numba", X.double(), 256, "float64"),
        ("numba", torch.empty(2, 3, 4, device="meta"), 256, "numba kernels run on the CPU"),
        ("triton", X, 256, "need a CUDA device"),
        ("numba", X, None, "binned engine only"),
        ("native", torch.empty(2, 3, 4, device="meta"), 256, "native kernels run on the CPU"),
        ("native", X, None, "binned engine only"),
        ("triton", X, None, "binned engine only"),
    ],
)
def test_requests_a_backend_cannot_serve_raise_with_the_reason(backend, x, bins, match, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendNotSupportedError, match=match):
        resolve(backend, x, bins)


def test_environment_request_that_cannot_be_served_names_the_variable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    with pytest.raises(BackendNotSupportedError, match="LOVASZ_BACKEND=triton"):
        lovasz.lovasz_softmax(X, T, bins=256)


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        lovasz.lovasz_softmax(X, T, bins=256, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        lovasz.LovaszHingeLoss(backend="gpu")
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="LOVASZ_BACKEND must be one of"):
        lovasz.lovasz_softmax(X, T, bins=256)


def _fake_triton(fail_forward=None, fail_backward=None, counter=None):
    """A Triton kernel module that runs the numba kernels, or raises the given exceptions."""
    from lovasz.engine import kernels_cpu

    def histogram(*args, **kwargs):
        if counter is not None:
            counter.append("forward")
        if fail_forward is not None:
            raise fail_forward
        return kernels_cpu.histogram(*args, **kwargs)

    def backward(*args, **kwargs):
        if fail_backward is not None:
            raise fail_backward
        return kernels_cpu.backward(*args, **kwargs)

    return types.SimpleNamespace(
        AVAILABLE=True,
        KEEPS_ERRORS=True,
        histogram=histogram,
        head=kernels_cpu.head,
        backward=backward,
        saves_errors=kernels_cpu.saves_errors,
    )


def _patch_kernels(monkeypatch, fake):
    real = backends.load_kernels
    monkeypatch.setattr(backends, "load_kernels", lambda name: fake if name == "triton" else real(name))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def test_failing_backward_kernel_falls_back_once_with_a_warning(monkeypatch):
    _patch_kernels(monkeypatch, _fake_triton(fail_backward=RuntimeError("no kernel image for this GPU")))
    want = lovasz.lovasz_softmax(X, T, bins=256, backend=CPU_FUSED)
    with pytest.warns(lovasz.LovaszFallbackWarning, match="no kernel image"):
        got = lovasz.lovasz_softmax(X, T, bins=256)  # the probe fails before first use: the CPU kernels serve it
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per device: no second probe, no second warning
        assert resolve("auto", X, 256).name == CPU_FUSED
    with pytest.raises(BackendNotSupportedError, match="failed to compile or launch") as info:
        lovasz.lovasz_softmax(X, T, bins=256, backend="triton")  # asked for explicitly: an error
    assert isinstance(info.value.__cause__, RuntimeError)


def test_probe_runs_once_per_device_until_reset(monkeypatch):
    calls: list[str] = []
    _patch_kernels(monkeypatch, _fake_triton(counter=calls))
    assert resolve("auto", X, 256).name == "triton"
    probe_calls = len(calls)
    assert probe_calls >= 2  # both kernel families
    resolve("auto", X, 256)
    assert len(calls) == probe_calls
    triton_probe.reset()
    resolve("auto", X, 256)
    assert len(calls) == 2 * probe_calls


def test_plain_bugs_and_errors_of_real_calls_are_not_hidden(monkeypatch):
    _patch_kernels(monkeypatch, _fake_triton(fail_forward=TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        lovasz.lovasz_softmax(X, T, bins=256)  # the probe re-raises what is not a compile/launch error
    triton_probe.reset()
    fake = _fake_triton()
    _patch_kernels(monkeypatch, fake)
    assert resolve("auto", X, 256).name == "triton"  # probe passed
    fake.histogram = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("launch failed"))
    with pytest.raises(RuntimeError, match="launch failed"):
        lovasz.lovasz_softmax(X, T, bins=256)  # a real call's failure propagates: no silent fallback


def test_out_of_memory_is_not_a_launch_error():
    assert not backends._is_launch_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert backends._is_launch_error(RuntimeError("CUDA error: no kernel image is available"))
    assert not backends._is_launch_error(ValueError("bad"))


def test_without_the_native_library_numba_serves_the_cpu(monkeypatch):
    # An install without a C compiler: the automatic choice moves on to numba, a request for it says why.
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setitem(backends._INSTALLED, "native", False)
    assert resolve("auto", X, 256).name == "numba"
    with pytest.raises(BackendNotSupportedError, match=r"native CPU kernels were not built.*C compiler"):
        lovasz.lovasz_softmax(X, T, bins=256, backend="native")


@pytest.mark.parametrize("probe_fails", [False, True])
def test_compiled_first_call_probes_once_without_a_graph_break(monkeypatch, probe_fails):
    # The probe's verdict is a constant to torch.compile: the first compiled call runs the probe while
    # tracing, without a graph break, and the second call reuses the graph (it recompiled when the probe's
    # cache was traced).
    fail = RuntimeError("no kernel image for this GPU") if probe_fails else None
    _patch_kernels(monkeypatch, _fake_triton(fail_backward=fail))

    def fn(x, t):
        return lovasz.lovasz_softmax(x, t, bins=256)

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fn)
    xc, xe = X.clone().requires_grad_(True), X.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled(xc, T)
    fallback = [w for w in caught if issubclass(w.category, lovasz.LovaszFallbackWarning)]
    assert len(fallback) == (1 if probe_fails else 0)
    want = fn(xe, T)  # eager, after the probe: the same backend
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-7)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(2):
            compiled(X.clone().requires_grad_(True), T).backward()
    assert counters["stats"]["unique_graphs"] == 1  # one graph for the loss, compiled once
    torch._dynamo.reset()
