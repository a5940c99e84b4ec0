"""torch.compile with the default backend (Inductor): every loss, both engines and every CPU backend give
the eager value and gradient, without graph breaks; the fused kernels stay fused (custom operators)."""

from __future__ import annotations

import pytest
import torch

import lovasz
from conftest import CPU_FUSED
from lovasz.engine import backends, registry

B, C, H, W = 2, 3, 8, 8


def _inputs(kind: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g) * 2
    if kind == "softmax":
        # C + 1 classes, the last absent from the batch and class C - 1 absent from image 1: the native
        # kernels leave those groups out under classes="present" (the default), compiled too.
        x = torch.randn(B, C + 1, H, W, generator=g) * 2
        t = torch.randint(0, C, (B, H, W), generator=g)
        t[1] = torch.randint(0, C - 1, (H, W), generator=g)
        t[0, 0, :3] = 255
        return x, t
    t = torch.randint(0, 2, (B, C, H, W), generator=g)
    t[0, 0, 0, :3] = 255
    return x, t


def _loss(kind: str, bins, backend, per_image: bool):
    fn = getattr(lovasz, f"lovasz_{kind}")
    return lambda x, t: fn(x, t, per_image=per_image, ignore_index=255, bins=bins, backend=backend)


CASES = [(None, "auto"), (256, "torch")] + [(256, name) for name in CPU_FUSED]


@pytest.mark.parametrize("kind", ["softmax", "hinge", "sigmoid"])
@pytest.mark.parametrize(("bins", "backend"), CASES)
@pytest.mark.parametrize("per_image", [False, True])
def test_compiled_loss_equals_eager(kind, bins, backend, per_image):
    torch._dynamo.reset()
    fn = _loss(kind, bins, backend, per_image)
    x, t = _inputs(kind)
    explanation = torch._dynamo.explain(fn)(x, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    _assert_compiled_equals_eager(torch.compile(fn), fn, x, t)  # default backend: Inductor


def _assert_compiled_equals_eager(compiled, fn, x, t) -> None:
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    lc, le = compiled(xc, t), fn(xe, t)
    torch.testing.assert_close(lc, le, rtol=1e-6, atol=1e-6)
    lc.backward()
    le.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-7)


def test_compiled_model_keeps_the_fused_kernels(monkeypatch):
    if not CPU_FUSED:
        pytest.skip("no fused CPU kernels here")
    calls = []
    real = registry.load_kernels

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(registry, "load_kernels", spy)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    torch._dynamo.reset()
    model = torch.nn.Conv2d(2, C, 3, padding=1)
    criterion = lovasz.LovaszSoftmaxLoss(bins=lovasz.DEFAULT_BINS)

    def step(images, labels):
        return criterion(model(images), labels)

    images = torch.randn(B, 2, H, W)
    labels = torch.randint(0, C, (B, H, W))
    loss = torch.compile(step)(images, labels)
    loss.backward()
    assert calls.count(CPU_FUSED[0]) >= 2  # the forward and the backward operator ran the fused kernels
    grad = model.weight.grad.clone()
    model.zero_grad()
    step(images, labels).backward()
    torch.testing.assert_close(model.weight.grad, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("per_image", [False, True])
def test_compiled_native_backward_without_kept_errors(per_image, monkeypatch):
    # LOVASZ_KEEP_ERRORS=0 under the default backend: the compiled graph keeps no errors either, and gives
    # the eager value and gradient with kept errors, bit for bit.
    fn = _loss("softmax", 256, "native", per_image)
    x, t = _inputs("softmax")
    xe = x.clone().requires_grad_(True)
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "1")
    le = fn(xe, t)
    le.backward()
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "0")
    torch._dynamo.reset()
    xc = x.clone().requires_grad_(True)
    lc = torch.compile(fn)(xc, t)
    lc.backward()
    assert torch.equal(lc, le)
    assert torch.equal(xc.grad, xe.grad)


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("per_image", [False, True])
def test_fused_operators_pass_opcheck(backend, per_image):
    # torch.library.opcheck: the schema, the autograd registration, the fake (meta) implementations and,
    # for the backward operator, AOT dispatch (traced outputs equal to eager ones). The forward operator's
    # table leaves bins it never reads uninitialised, so its outputs are only compared through backward's.
    from lovasz import surrogates
    from lovasz.engine import fused
    from lovasz.engine.histogram import Binning

    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, 64, generator=g) * 2
    t = torch.randint(0, C, (B, 64), generator=g)
    binning = Binning.for_bins(lovasz.DEFAULT_BINS)
    config = (backend, surrogates.SOFTMAX.code, per_image, None, binning.lo, binning.per_octave, False)
    forward, backward = torch.ops.lovasz.binned_forward.default, torch.ops.lovasz.binned_backward.default
    none = t.new_empty(0)  # no ragged batch
    for inputs in [(x, t, none), (x.clone().requires_grad_(True), t, none)]:
        torch.library.opcheck(
            forward, (*inputs, *config), test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
        )
    out = fused.ForwardOutputs.of(forward(x, t, none, *config))
    kept = fused.errors_kept(backend, surrogates.SOFTMAX.code)
    source, labels = (out.kept, t.new_empty(0)) if kept else (x, t)
    scale = torch.rand(out.losses.shape, generator=g)
    weights = out.head_weights * scale.view(-1, 1)
    head = (out.cut, out.head_values, out.head_fg, weights)
    torch.library.opcheck(backward, (source, labels, none, out.top, out.table, scale, *head, kept, *config))
    assert fused._LIB is not None  # the registrations live as long as the module


@pytest.mark.parametrize("backend", CPU_FUSED)
@pytest.mark.parametrize("kind", ["softmax", "hinge"])
def test_double_backward_through_the_fused_kernels_is_refused_clearly(backend, kind):
    # The fused kernels have one derivative: a backward that records a graph (create_graph=True) raises
    # an error that names the fix, rather than leaving the loss's part out of a second derivative.
    x, t = _inputs(kind)
    x.requires_grad_(True)
    loss = getattr(lovasz, f"lovasz_{kind}")(x, t, ignore_index=255, bins=lovasz.DEFAULT_BINS, backend=backend)
    with pytest.raises(RuntimeError, match=r'no second derivative.*backend="torch"'):
        torch.autograd.grad(loss, x, create_graph=True)
    (grad,) = torch.autograd.grad(loss * 1.0, x)  # a first derivative is fine
    assert grad.abs().sum() > 0
    # The PyTorch binned engine and the exact engine, the fixes the message names, differentiate twice.
    for bins, other in [(lovasz.DEFAULT_BINS, "torch"), (None, "auto")]:
        loss = getattr(lovasz, f"lovasz_{kind}")(x, t, ignore_index=255, bins=bins, backend=other)
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        grad.sum().backward()
    # Compiled, PyTorch itself refuses double backward (the README says so), when it comes to it.
    torch._dynamo.reset()
    compiled = torch.compile(_loss(kind, lovasz.DEFAULT_BINS, backend, per_image=True))
    with pytest.raises(RuntimeError, match="double backward"):
        (grad,) = torch.autograd.grad(compiled(x, t), x, create_graph=True)
        grad.sum().backward()


@pytest.mark.parametrize("kind", ["softmax", "hinge"])
@pytest.mark.parametrize("dynamic", [None, True])
def test_compiled_loss_follows_changing_shapes(kind, dynamic):
    # A training loop's last batch is smaller, and images may change size: with automatic dynamic shapes
    # (the default, which recompiles with symbolic sizes at the second shape) and with dynamic=True, the
    # fused operators' fake implementations take symbolic sizes, and each call equals eager.
    torch._dynamo.reset()
    fn = _loss(kind, lovasz.DEFAULT_BINS, "auto", per_image=True)
    compiled = torch.compile(fn, dynamic=dynamic)
    g = torch.Generator().manual_seed(2)
    for b, h, w in [(2, 8, 8), (3, 8, 8), (5, 12, 10), (1, 8, 8)]:
        if kind == "softmax":
            x, t = torch.randn(b, C, h, w, generator=g), torch.randint(0, C, (b, h, w), generator=g)
        else:
            x, t = torch.randn(b, h, w, generator=g), torch.randint(0, 2, (b, h, w), generator=g)
        _assert_compiled_equals_eager(compiled, fn, x, t)


@pytest.mark.parametrize("kind", ["softmax", "hinge"])
def test_first_compiled_calls_compile_once(kind, monkeypatch):
    """A process whose first loss call is compiled (nothing looked up yet) compiles once: the second call
    reuses the graph.  The backend look-ups fill a cache on first use; traced, their guards would fail on
    the next call and compile the whole loss again."""
    monkeypatch.setattr(registry, "_INSTALLED", {})  # as in a fresh process
    torch._dynamo.reset()
    fn = _loss(kind, 256, "auto", per_image=False)
    compiled = torch.compile(fn)
    x, t = _inputs(kind)
    compiled(x.clone().requires_grad_(True), t).backward()
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(2):
            compiled(x.clone().requires_grad_(True), t).backward()
    torch._dynamo.reset()


def test_combined_loss_warmup_compiles_without_graph_breaks():
    """CrossEntropyLovaszLoss's warm-up weight stays in the graph (no graph break on the step counter, no
    recompilation as it advances), and the compiled steps give the eager values, steps and gradients."""
    x, _ = _inputs("softmax")
    t = torch.randint(0, C + 1, (B, H, W), generator=torch.Generator().manual_seed(1))
    eager = lovasz.CrossEntropyLovaszLoss(lovasz_weight=0.5, warmup_steps=3, bins=256)
    compiled_crit = lovasz.CrossEntropyLovaszLoss(lovasz_weight=0.5, warmup_steps=3, bins=256)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lovasz.CrossEntropyLovaszLoss(warmup_steps=3, bins=256))(x, t)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(compiled_crit)
    _assert_compiled_equals_eager(compiled, eager, x, t)
    with torch.compiler.set_stance("fail_on_recompile"):  # the advancing counter recompiles nothing
        for _ in range(4):  # through the warm-up and past it
            _assert_compiled_equals_eager(compiled, eager, x, t)
    assert int(compiled_crit.steps) == int(eager.steps) == 5
    torch._dynamo.reset()
    # The weight is an operator (see lovasz.modules._warmup_weight): PyTorch's own checks of operators.
    torch.library.opcheck(torch.ops.lovasz.warmup_weight.default, (torch.tensor(2), 0.5, 4))


# Value checks under torch.compile (default backend: inductor)

X4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
T4 = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
M4 = T4.clamp(max=1)


def test_value_checks_run_under_torch_compile_softmax(monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", "torch")
    torch._dynamo.reset()

    def fn(x, t):
        return lovasz.lovasz_softmax(x, t, bins=None)

    compiled = torch.compile(fn)
    torch.testing.assert_close(compiled(X4, T4), fn(X4, T4))
    bad_label = T4.clone()
    bad_label[0, 0, 0] = 255  # no ignore_index: eager mode raises ValueError
    with pytest.raises(RuntimeError, match=r"target has labels outside \[0, 3\)"):
        compiled(X4, bad_label)
    nan_input = X4.clone()
    nan_input[1, 2, 3, 3] = float("nan")
    with pytest.raises(RuntimeError, match="input contains NaN or Inf values"):
        compiled(nan_input, T4)


def test_value_checks_run_under_torch_compile_binary(monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", "torch")
    torch._dynamo.reset()

    def fn(x, t):
        return lovasz.lovasz_hinge(x, t, bins=None, ignore_index=255)

    compiled = torch.compile(fn)
    m = M4.masked_fill(T4 == 2, 255)
    torch.testing.assert_close(compiled(X4[:, 0], m), fn(X4[:, 0], m))
    with pytest.raises(RuntimeError, match="target must contain only 0 and 1 or ignore_index=255"):
        compiled(X4[:, 0], m.masked_fill(T4 == 2, 2))


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("loss", ["softmax", "hinge"])
def test_native_kernels_check_inputs_under_torch_compile(loss):
    # With the native kernels the loss leaves the NaN/Inf and label checks to their pass 1, compiled or
    # not (Decision.checks_inputs): under torch.compile the custom operator raises the eager ValueError.
    torch._dynamo.reset()
    if loss == "softmax":

        def fn(x, t):
            return lovasz.lovasz_softmax(x, t, bins=lovasz.DEFAULT_BINS, backend="native")

        x, t, bad_value = X4, T4, 3
    else:

        def fn(x, t):
            return lovasz.lovasz_hinge(x, t, bins=lovasz.DEFAULT_BINS, backend="native")

        x, t, bad_value = X4[:, 0], M4, 2
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
