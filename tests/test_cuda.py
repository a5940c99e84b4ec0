"""The losses on a CUDA device: exact engine against the CPU, Triton kernels against the PyTorch binned
engine and the exact engine, options, mixed precision, ``channels_last``, ``torch.compile``, determinism
and the automatic backend choice.

Skipped when no CUDA device is available.  Sizes are small: the whole file takes well under two minutes
on one GPU (most of it compiling Triton and Inductor kernels).

**Running the same checks without a GPU.**  ``LOVASZ_TEST_DEVICE=cpu`` runs every check on the CPU
instead, with the native CPU kernels standing in for Triton (skipped where they were not built) and the
CPU-only "exact engine vs the CPU" comparison degenerating to a self-comparison::

    LOVASZ_TEST_DEVICE=cpu python -m pytest -q -p no:cacheprovider tests/test_cuda.py

This exercises the file's logic (API use, shapes, tolerances) on machines with no GPU.  Adding
``LOVASZ_TEST_FUSED=triton TRITON_INTERPRET=1`` runs the Triton kernels under Triton's CPU interpreter
instead of the CPU kernels (slower; the automatic-choice check then expects Triton too).  The
``torch.compile`` checks are skipped there unless ``LOVASZ_TEST_COMPILE=1`` (Inductor on the CPU is slow),
and the check at a realistic size runs on CUDA only.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

import lovasz
from lovasz.engine import Binning, backends, registry
from lovasz.engine.backends import triton_probe

_REQUESTED = os.environ.get("LOVASZ_TEST_DEVICE", "cuda")
if _REQUESTED not in ("cuda", "cpu"):
    raise ValueError(f"LOVASZ_TEST_DEVICE must be 'cuda' or 'cpu', got {_REQUESTED!r}")
DEVICE = torch.device(_REQUESTED)
ON_CUDA = DEVICE.type == "cuda"
# The fused backend under test: Triton on CUDA; on the CPU the native kernels, or Triton's interpreter with
# LOVASZ_TEST_FUSED=triton TRITON_INTERPRET=1.
FUSED = os.environ.get("LOVASZ_TEST_FUSED", "triton" if ON_CUDA else "native")
BINS = lovasz.DEFAULT_BINS
P = Binning.for_bins(BINS).per_octave
LO = Binning.for_bins(BINS).lo

pytestmark = [
    pytest.mark.skipif(
        ON_CUDA and not torch.cuda.is_available(),
        reason="no CUDA device (LOVASZ_TEST_DEVICE=cpu runs these checks on the CPU)",
    ),
    pytest.mark.skipif(bool(registry.REGISTRY[FUSED].missing()), reason=f"the {FUSED} kernels cannot run here"),
]

COMPILE = ON_CUDA or os.environ.get("LOVASZ_TEST_COMPILE") == "1"


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)


# --- cases -------------------------------------------------------------------------------------------

FNS = {"softmax": lovasz.lovasz_softmax, "hinge": lovasz.lovasz_hinge, "sigmoid": lovasz.lovasz_sigmoid}

# name: (loss, layout, keyword arguments).  Layouts: "classes" ([B, C, H, W] logits, [B, H, W] ids),
# "binary1" ([B, 1, H, W] logits, [B, H, W] masks), "binary" ([B, H, W] both), "multilabel" ([B, 3, H, W]
# both).  "ignore" in a name: about 20% of the labels are 255 (and ignore_index=255).
CASES: dict[str, tuple[str, str, dict]] = {
    "softmax": ("softmax", "classes", {}),
    "softmax-per-image": ("softmax", "classes", {"per_image": True}),
    "softmax-ignore": ("softmax", "classes", {"ignore_index": 255}),
    "softmax-all-per-image-ignore": ("softmax", "classes", {"classes": "all", "per_image": True, "ignore_index": 255}),
    "softmax-classes-0-2": ("softmax", "classes", {"classes": [0, 2]}),
    "softmax-weight": ("softmax", "classes", {"weight": torch.tensor([0.5, 1.0, 2.0, 1.5, 3.0])}),
    "softmax-weight-per-image-none": (
        "softmax",
        "classes",
        {"weight": [1.0, 2.0, 0.5, 1.0, 1.0], "per_image": True, "reduction": "none"},
    ),
    "softmax-probs": ("softmax", "classes", {"from_logits": False}),
    "hinge": ("hinge", "binary1", {}),
    "hinge-batch": ("hinge", "binary", {"per_image": False}),
    "hinge-multilabel-batch": ("hinge", "multilabel", {"per_image": False}),
    "hinge-multilabel-ignore-none": ("hinge", "multilabel", {"ignore_index": 255, "reduction": "none"}),
    "sigmoid": ("sigmoid", "binary", {}),
    "sigmoid-multilabel-per-image": ("sigmoid", "multilabel", {"per_image": True}),
    "sigmoid-multilabel-probs-ignore": ("sigmoid", "multilabel", {"from_logits": False, "ignore_index": 255}),
}


def make_inputs(layout: str, kwargs: dict, seed: int = 0, b: int = 3, c: int = 5, h: int = 20, w: int = 24):
    """CPU logits ~ N(0, 3²) (or probabilities, with ``from_logits=False``) and labels for ``layout``."""
    g = torch.Generator().manual_seed(seed)
    if layout == "classes":
        x = torch.randn(b, c, h, w, generator=g) * 3
        t = torch.randint(0, c, (b, h, w), generator=g)
        if kwargs.get("from_logits", True) is False:
            x = x.softmax(1)
    else:
        shape = {"binary1": (b, 1, h, w), "binary": (b, h, w), "multilabel": (b, 3, h, w)}[layout]
        x = torch.randn(shape, generator=g) * 3
        t = (torch.rand(shape, generator=g) < 0.3).long()
        if layout == "binary1":
            t = t[:, 0]
        if kwargs.get("from_logits", True) is False:
            x = x.sigmoid()
    if kwargs.get("ignore_index") is not None:
        t = t.masked_fill(torch.rand(t.shape, generator=g) < 0.2, kwargs["ignore_index"])
    return x, t


def on_device(kwargs: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def run(fn, x: torch.Tensor, t: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (detached) and the gradient of its sum w.r.t. a fresh leaf copy of ``x``."""
    xg = x.detach().clone().requires_grad_(True)
    out = fn(xg, t, **kwargs)
    out.sum().backward()
    return out.detach(), xg.grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten().cpu(), b.double().flatten().cpu()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def assert_grads_close(got: torch.Tensor, want: torch.Tensor, *, min_cos: float, rel: float) -> None:
    """Cosine of at least ``min_cos`` and every entry within ``rel`` of the largest entry of ``want``."""
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.isfinite(got).all()
    cos = cosine(got, want)
    assert cos >= min_cos, f"gradient cosine {cos:.7f} < {min_cos}"
    worst = float((got - want).abs().max())
    scale = float(want.abs().max())
    assert worst <= rel * scale + 1e-9, f"max gradient difference {worst:.3g} > {rel} × {scale:.3g}"


# --- exact engine: device against CPU -------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_exact_engine_matches_cpu(case):
    kind, layout, kwargs = CASES[case]
    fn = FNS[kind]
    x, t = make_inputs(layout, kwargs)
    want, want_grad = run(fn, x, t, **kwargs)
    got, got_grad = run(fn, x.to(DEVICE), t.to(DEVICE), **on_device(kwargs))
    assert got.device.type == DEVICE.type and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_grad.cpu(), want_grad, atol=1e-4, rtol=1e-4)
    assert cosine(got_grad, want_grad) >= 0.99999


# --- binned engine: fused kernels, PyTorch, exact ---------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_binned_engine_matches_exact_and_backends_agree(case):
    kind, layout, kwargs = CASES[case]
    fn = FNS[kind]
    x, t = make_inputs(layout, kwargs, seed=1)
    x, t, kw = x.to(DEVICE), t.to(DEVICE), on_device(kwargs)
    exact, exact_grad = run(fn, x, t, **kw)
    fused, fused_grad = run(fn, x, t, bins=BINS, backend=FUSED, **kw)
    ref, ref_grad = run(fn, x, t, bins=BINS, backend="torch", **kw)
    assert fused.dtype == torch.float32 and fused_grad.dtype == x.dtype and fused.device.type == DEVICE.type
    for name, value, grad in (("fused", fused, fused_grad), ("torch", ref, ref_grad)):
        e, v = exact.double().cpu(), value.double().cpu()
        slack = 0.01 * e + 1e-4 if kind == "hinge" else e / P + 2.0**LO + 1e-5
        assert ((e - v).abs() <= slack).all(), f"{name}: binned {v.tolist()} vs exact {e.tolist()}"
        assert (v <= e + 1e-5 + 1e-6 * e).all(), f"{name}: binned {v.tolist()} above exact {e.tolist()}"
        assert cosine(grad, exact_grad) >= 0.999, f"{name}: gradient cosine {cosine(grad, exact_grad)}"
    torch.testing.assert_close(fused, ref, atol=2e-3, rtol=2e-3)
    assert_grads_close(fused_grad, ref_grad, min_cos=0.9999, rel=2e-2)


@pytest.mark.skipif(not ON_CUDA, reason="a realistic size is checked on CUDA only")
@pytest.mark.parametrize("per_image", [False, True])
def test_realistic_size(per_image):
    """2×19×512×1024 (Cityscapes-like): fixed-point sums and indexing at ~20M elements."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(2, 19, 512, 1024, device=DEVICE, generator=g) * 3
    t = torch.randint(0, 19, (2, 512, 1024), device=DEVICE, generator=g)
    t[:, :64] = 255
    kw = {"per_image": per_image, "ignore_index": 255}
    exact, exact_grad = run(lovasz.lovasz_softmax, x, t, **kw)
    fused, fused_grad = run(lovasz.lovasz_softmax, x, t, bins=BINS, backend=FUSED, **kw)
    ref, _ = run(lovasz.lovasz_softmax, x, t, bins=BINS, backend="torch", **kw)
    e = exact.item()
    assert abs(e - fused.item()) <= e / P + 2.0**LO + 1e-5 and fused.item() <= e + 1e-5
    torch.testing.assert_close(fused, ref, atol=2e-3, rtol=2e-3)
    assert cosine(fused_grad, exact_grad) >= 0.999
    assert torch.count_nonzero(fused_grad[:, :, :64]) == 0  # ignored rows get no gradient


# --- mixed precision ------------------------------------------------------------------------------------

HALF = [torch.float16, torch.bfloat16]


def _kind_inputs(kind: str, seed: int = 2):
    layout = {"softmax": "classes", "hinge": "binary1", "sigmoid": "multilabel"}[kind]
    x, t = make_inputs(layout, {}, seed=seed)
    return FNS[kind], x.to(DEVICE), t.to(DEVICE)


@pytest.mark.parametrize("bins", [None, BINS])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", list(FNS))
def test_half_precision_inputs(kind, dtype, bins):
    fn, x, t = _kind_inputs(kind)
    backend = "auto" if bins is None else FUSED
    xh = x.to(dtype).requires_grad_(True)
    loss = fn(xh, t, bins=bins, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()
    ref, ref_grad = run(fn, xh.detach().float(), t, bins=bins, backend=backend)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert cosine(xh.grad, ref_grad) >= 0.999


@pytest.mark.parametrize("bins", [None, BINS])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", list(FNS))
def test_under_autocast(kind, dtype, bins):
    fn, x, t = _kind_inputs(kind)
    backend = "auto" if bins is None else FUSED
    conv = torch.nn.Conv2d(2, x.shape[1], 3, padding=1).to(DEVICE)
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(x.shape[0], 2, *x.shape[2:], generator=g).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=dtype):
        logits = conv(inputs) * 3
        logits.retain_grad()
        loss = fn(logits, t, bins=bins, backend=backend)
        loss32 = fn(x, t, bins=bins, backend=backend)  # float32 input under autocast
    assert logits.dtype == dtype and loss.dtype == torch.float32 and loss32.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == dtype
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    ref = fn(logits.detach().float(), t, bins=bins, backend=backend)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert loss32.item() == pytest.approx(fn(x, t, bins=bins, backend=backend).item(), abs=1e-6)


# --- memory layout --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [None, BINS])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "hinge"])
def test_channels_last(kind, bins):
    layout = "classes" if kind == "softmax" else "multilabel"
    x, t = make_inputs(layout, {}, seed=4)
    x, t = x.to(DEVICE), t.to(DEVICE)
    backend = "auto" if bins is None else FUSED
    cl = x.contiguous(memory_format=torch.channels_last)
    t_cl = t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    assert not cl.is_contiguous()
    got, got_grad = run(FNS[kind], cl, t_cl, bins=bins, backend=backend, per_image=True)
    want, want_grad = run(FNS[kind], x, t, bins=bins, backend=backend, per_image=True)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-6, rtol=1e-4)


# --- torch.compile --------------------------------------------------------------------------------------


@pytest.mark.skipif(not COMPILE, reason="torch.compile on the CPU is slow; set LOVASZ_TEST_COMPILE=1")
@pytest.mark.parametrize(("kind", "bins", "backend"), [("softmax", None, "auto"), ("softmax", BINS, "auto")])
def test_torch_compile_default_backend(kind, bins, backend):
    """Inductor (the default backend), whole graph, against eager with the same arguments.  The fused
    kernels are custom operators, so the compiled graph calls the same kernels as eager (on CUDA the
    automatic choice is Triton, inside the graph too).  Two compilations only: each takes seconds.

    The Triton probe is forgotten first, so the first compiled call probes while tracing: with
    ``fullgraph=True`` a graph break there would fail, and the second call must not compile again."""
    torch._dynamo.reset()
    triton_probe.reset()
    layout = "classes" if kind == "softmax" else "multilabel"
    x, t = make_inputs(layout, {"ignore_index": 255}, seed=5)
    x, t = x.to(DEVICE), t.to(DEVICE)
    loss_fn = FNS[kind]

    def fn(x, t, backend=backend):
        return loss_fn(x, t, per_image=True, ignore_index=255, bins=bins, backend=backend)

    compiled = torch.compile(fn, fullgraph=True)
    got, got_grad = run(compiled, x, t)
    with torch.compiler.set_stance("fail_on_recompile"):
        again, _ = run(compiled, x, t)  # a second call reuses the graph
    want, want_grad = run(fn, x, t)
    assert got.dtype == torch.float32 and torch.equal(got, again)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert_grads_close(got_grad, want_grad, min_cos=0.9999, rel=1e-2)
    if bins is not None:  # and the PyTorch binned engine, eager
        ref, ref_grad = run(fn, x, t, backend="torch")
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-3)
        assert cosine(got_grad, ref_grad) >= 0.999
    torch._dynamo.reset()


# --- determinism and the automatic choice ------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("kind", list(FNS))
def test_fused_binned_is_bitwise_deterministic(kind, per_image):
    layout = "classes" if kind == "softmax" else "multilabel"
    x, t = make_inputs(layout, {"ignore_index": 255}, seed=6, b=4, c=21 if kind == "softmax" else 3, h=64, w=64)
    x, t = x.to(DEVICE), t.to(DEVICE)
    runs = [run(FNS[kind], x, t, bins=BINS, backend=FUSED, per_image=per_image, ignore_index=255) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_automatic_choice_is_the_fused_backend_without_fallback():
    x, t = make_inputs("classes", {}, seed=7)
    x, t = x.to(DEVICE), t.to(DEVICE)
    triton_probe.reset()  # probe again here, so that a failure shows in this test
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", lovasz.LovaszFallbackWarning)
            assert backends.resolve("auto", x, BINS).name == FUSED
            if ON_CUDA:
                assert triton_probe.failure(x.device) is None
            auto, auto_grad = run(lovasz.lovasz_softmax, x, t, bins=BINS)
            hinge = lovasz.lovasz_hinge(x[:, 0], (t > 2).long(), bins=BINS)
    finally:
        triton_probe.reset()
    explicit, explicit_grad = run(lovasz.lovasz_softmax, x, t, bins=BINS, backend=FUSED)
    assert torch.equal(auto, explicit) and torch.equal(auto_grad, explicit_grad)
    assert torch.equal(hinge, lovasz.lovasz_hinge(x[:, 0], (t > 2).long(), bins=BINS, backend=FUSED))
    assert backends.resolve("auto", x, None).name == "torch"  # the exact engine is PyTorch everywhere
