"""The backend resolver: order, errors for requests it cannot serve, the Triton probe and its fallback.

Kernel failures are simulated through one seam, ``lovasz.engine.registry.load_kernels``: a fake Triton
module whose kernels are the native ones (its registry entry given the native capabilities but their own
local road, so that forward goes through ``histogram``) and whose backward (or forward) raises.
``TRITON_INTERPRET=1`` makes the CPU count as a Triton device, so the automatic choice considers Triton
here.
"""

from __future__ import annotations

import dataclasses
import types
import warnings

import pytest
import torch

import lovasz
from lovasz.engine import backends, probe, registry
from lovasz.engine.backends import BackendNotSupportedError, resolve, triton_probe

needs_native = pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
AUTO_CPU = "native" if registry.native_built() else "torch"  # the automatic choice on the CPU
X = torch.randn(2, 3, 6, 6)
T = torch.randint(0, 3, (2, 6, 6))


@pytest.fixture(autouse=True)
def fresh_probe():
    triton_probe.reset()
    yield
    triton_probe.reset()


@needs_native
def test_order_argument_then_environment_then_automatic(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    auto = resolve("auto", X, 256)
    assert (auto.name, auto.source, auto.engine) == ("native", "automatic", "binned")  # automatic, on the CPU
    monkeypatch.setenv(backends.ENV_VAR, "torch")
    assert resolve("auto", X, 256).name == "torch"  # the environment
    assert resolve("auto", X, 256).source == "environment"
    assert resolve("native", X, 256).name == "native"  # the argument beats the environment
    assert resolve("native", X, 256).source == "argument"
    assert resolve("auto", X, None).name == "torch"  # the exact engine reads no environment
    assert resolve("auto", X.double(), 256).name == "torch"
    monkeypatch.setenv(backends.ENV_VAR, "auto")
    assert resolve("auto", X.double(), 256).name == "torch"  # float64: the automatic choice keeps PyTorch


@needs_native
def test_backend_argument_reaches_the_engine(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    calls = []
    real = registry.load_kernels

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(registry, "load_kernels", spy)
    a = lovasz.lovasz_softmax(X, T, bins=256, backend="torch")
    assert calls == []
    b = lovasz.LovaszSoftmaxLoss(bins=256, backend="native")(X, T)
    assert "native" in calls and set(calls) == {"native"}
    torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    calls.clear()
    lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1), bins=256, backend="native")
    lovasz.lovasz_sigmoid(X[:, 0], T.clamp(max=1), bins=256, backend="native")
    assert calls and set(calls) == {"native"}


@pytest.mark.parametrize(
    ("backend", "x", "bins", "match"),
    [
        ("native", X.double(), 256, "float64"),
        ("triton", X.double(), 256, "float64"),
        ("triton", X, 256, "need a CUDA device"),
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
    """A Triton kernel module that runs the native kernels, or raises the given exceptions."""
    from lovasz.engine import kernels_native

    def histogram(*args, **kwargs):
        if counter is not None:
            counter.append("forward")
        if fail_forward is not None:
            raise fail_forward
        return kernels_native.histogram(*args, **kwargs)

    def backward(*args, **kwargs):
        if fail_backward is not None:
            raise fail_backward
        return kernels_native.backward(*args, **kwargs)

    return types.SimpleNamespace(
        histogram=histogram,
        head=kernels_native.head,
        backward=backward,
        saves_errors=kernels_native.saves_errors,
        tables=kernels_native.tables,
        table_arg=kernels_native.table_arg,
        empty_table=kernels_native.empty_table,
    )


def _patch_kernels(monkeypatch, fake):
    if not registry.native_built():
        pytest.skip("the fake Triton module runs the native kernels, which were not built")
    real = registry.load_kernels
    monkeypatch.setattr(registry, "load_kernels", lambda name: fake if name == "triton" else real(name))
    native = registry.REGISTRY["native"].capabilities
    entry = dataclasses.replace(
        registry.REGISTRY["triton"],
        capabilities=dataclasses.replace(native, local_losses=False, global_losses=False),
        missing=lambda: [],
    )
    monkeypatch.setitem(registry.REGISTRY, "triton", entry)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


def test_failing_backward_kernel_falls_back_once_with_a_warning(monkeypatch):
    _patch_kernels(monkeypatch, _fake_triton(fail_backward=RuntimeError("no kernel image for this GPU")))
    want = lovasz.lovasz_softmax(X, T, bins=256, backend="native")
    with pytest.warns(lovasz.LovaszFallbackWarning, match="no kernel image"):
        got = lovasz.lovasz_softmax(X, T, bins=256)  # the probe fails before first use: the CPU kernels serve it
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once per device: no second probe, no second warning
        assert resolve("auto", X, 256).name == "native"
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
    assert not probe.is_launch_error(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert probe.is_launch_error(RuntimeError("CUDA error: no kernel image is available"))
    assert not probe.is_launch_error(ValueError("bad"))


def test_without_the_native_library_the_pytorch_engine_serves_the_cpu_with_one_warning(monkeypatch):
    # An install without a C compiler: the automatic choice uses the PyTorch engine and says so once per
    # process, with the reason and the fix; a request for the native kernels says why it cannot be served.
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setitem(registry._INSTALLED, "native", False)
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    want = lovasz.lovasz_softmax(X, T, bins=256, backend="torch")
    with pytest.warns(lovasz.LovaszFallbackWarning, match=r"not built.*Install a C compiler.*backend='torch'") as w:
        got = lovasz.lovasz_softmax(X, T, bins=256)
    assert w[0].filename == __file__  # attributed to the loss's caller
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert resolve("auto", X, 256).name == "torch"
        lovasz.lovasz_hinge(X[:, 0], T.clamp(max=1), bins=256)
        lovasz.lovasz_softmax(X, T, bins=256, backend="torch")
    with pytest.raises(BackendNotSupportedError, match=r"native CPU kernels were not built.*C compiler"):
        lovasz.lovasz_softmax(X, T, bins=256, backend="native")


def test_calls_the_native_kernels_would_not_serve_warn_nothing(monkeypatch):
    # float64, the exact engine and an explicit backend='torch' never reach the native kernels: no warning.
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setitem(registry._INSTALLED, "native", False)
    monkeypatch.setattr(backends, "_ANNOUNCED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lovasz.lovasz_softmax(X.double(), T, bins=256)
        lovasz.lovasz_softmax(X, T)
        lovasz.lovasz_softmax(X, T, bins=256, backend="torch")
    assert backends._ANNOUNCED == set()


def test_registry_declares_every_backend_name_once():
    from lovasz.types import BACKENDS

    assert set(registry.REGISTRY) == set(BACKENDS) - {"auto"}
    assert sorted(registry.AUTO_ORDER) == sorted(registry.REGISTRY)
    assert registry.AUTO_ORDER[-1] == "torch"  # serves every call: the automatic choice always ends
    for name, entry in registry.REGISTRY.items():
        assert entry.name == name


@pytest.mark.parametrize("name", [n for n, b in registry.REGISTRY.items() if b.fused])
def test_kernel_modules_offer_what_their_registry_entry_declares(name):
    entry = registry.REGISTRY[name]
    if entry.missing():
        pytest.skip(f"{name} cannot run here: {entry.missing()}")
    module = registry.load_kernels(name)
    caps = entry.capabilities
    wanted = {"histogram", "head", "backward"}
    wanted |= {"losses"} if caps.local_losses else set()
    wanted |= {"global_losses"} if caps.global_losses else set()
    wanted |= {"saves_errors"} if caps.keeps_errors else set()
    wanted |= {"tables"} if caps.cpu_tables else set()
    wanted |= {"table_arg", "empty_table"} if caps.table_layout == "G2K" else set()
    assert not {f for f in wanted if not callable(getattr(module, f, None))}


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


def test_explain_names_a_failed_probe(monkeypatch):
    _patch_kernels(monkeypatch, _fake_triton(fail_backward=RuntimeError("no kernel image for this GPU")))
    with pytest.warns(lovasz.LovaszFallbackWarning):
        e = lovasz.explain(X, bins=256)
    assert e.backend == "native"
    assert any("failed to compile or launch" in r and "no kernel image" in r for r in e.rejected["triton"])


def test_no_native_environment_falls_back_in_a_fresh_process():
    # LOVASZ_NO_NATIVE=1, read when the process starts: the C library is not loaded, the automatic choice
    # on the CPU is the PyTorch engine, said once per process with the reason and the fix.
    import os
    import subprocess
    import sys

    code = (
        "import warnings, torch, lovasz\n"
        "x = torch.randn(2, 3, 8, 8); t = torch.randint(0, 3, (2, 8, 8))\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    a = lovasz.lovasz_softmax(x, t, bins=256)\n"
        "    b = lovasz.lovasz_hinge(x[:, 0], (t > 1).long(), bins=256)\n"
        "fallback = [str(w.message) for w in caught if w.category is lovasz.LovaszFallbackWarning]\n"
        "assert len(fallback) == 1, fallback\n"
        "assert 'LOVASZ_NO_NATIVE=1' in fallback[0] and \"backend='torch'\" in fallback[0], fallback\n"
        "assert lovasz.explain(x, bins=256).backend == 'torch'\n"
        "assert torch.equal(a, lovasz.lovasz_softmax(x, t, bins=256, backend='torch'))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, LOVASZ_NO_NATIVE="1")
    env.pop(backends.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
