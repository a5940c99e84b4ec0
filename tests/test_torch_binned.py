"""The PyTorch binned engine from the scores (``backend="torch"``, :func:`lovasz.engine.binned.binned_scores`):
against the independent float64 reference, the error-matrix engine, the native kernels, itself compiled, and
cross-entropy's held memory.  Speed is measured by ``benchmarks/bench_fallback.py``, not here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lovasz
from conftest import CPU_FUSED
from lovasz.engine import Binning
from lovasz.engine import histogram as H
from lovasz.engine.binned import binned_scores, cell_codes, lovasz_binned_counts
from lovasz.engine.histogram import HEAD, inverse_top
from lovasz.errors import build_errors
from lovasz.surrogates import HINGE, SIGMOID, SIGMOID_PROBS
from reference import binary_ref, softmax_ref
from test_against_reference import _binary_case, _softmax_case

BINS = lovasz.DEFAULT_BINS
NATIVE = "native" in CPU_FUSED


def _run(fn, x, t, **kw):
    x = x.clone().requires_grad_(True)
    loss = fn(x, t, **kw)
    loss.backward(torch.ones_like(loss))
    return loss.detach(), x.grad


def _softmax_inputs(seed, b=3, c=5, h=11, w=13, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 3
    t = torch.randint(0, c, (b, h, w), generator=g)
    if ignore:
        t[:, :2] = 255
    return x, t


def _binary_inputs(seed, b=3, h=11, w=13, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, w, generator=g) * 2
    t = torch.randint(0, 2, (b, h, w), generator=g)
    if ignore:
        t[:, :2] = 255
    return x, t


@pytest.mark.parametrize("seed", range(0, 240, 7))
def test_small_groups_are_exact_against_the_reference(seed):
    # Groups of at most HEAD elements lie wholly in the exact head: the binned loss is the exact one.
    logits, target, kwargs = _softmax_case(seed)
    got, grad = _run(lovasz.lovasz_softmax, logits, target, bins=BINS, backend="torch", **kwargs)
    x64 = logits.double().requires_grad_(True)
    want = softmax_ref(x64, target, **kwargs)
    groups = logits.shape[0] * logits[0, 0].numel() if not kwargs["per_image"] else logits[0, 0].numel()
    if groups > HEAD:
        pytest.skip("groups larger than the head: covered by the bound test")
    torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
    if want.requires_grad:
        want.backward(torch.ones_like(want))
        torch.testing.assert_close(grad.double(), x64.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["hinge", "sigmoid"])
@pytest.mark.parametrize("seed", range(0, 80, 3))
def test_binary_small_groups_are_exact_against_the_reference(kind, seed):
    x, t, ref_x, ref_t, kwargs = _binary_case(seed)
    fn = lovasz.lovasz_hinge if kind == "hinge" else lovasz.lovasz_sigmoid
    per_group = ref_x[0, 0].numel() * (1 if kwargs["per_image"] else ref_x.shape[0])
    assert per_group <= HEAD or not kwargs["per_image"]
    if per_group > HEAD:
        pytest.skip("groups larger than the head: covered by the bound test")
    got, grad = _run(fn, x, t, bins=BINS, backend="torch", **kwargs)
    rx = ref_x.double().requires_grad_(True)
    want = binary_ref(kind, rx, ref_t, **kwargs)
    torch.testing.assert_close(got.double(), want.detach(), atol=1e-5, rtol=1e-5)
    if want.requires_grad:
        want.backward(torch.ones_like(want))
        torch.testing.assert_close(grad.double().reshape(-1), rx.grad.reshape(-1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_value_within_the_bound_of_the_reference(per_image, seed):
    # 0 <= f(e) - L_binned <= f(e)/P + 2^lo·U per group; the mean over groups keeps it.
    x, t = _softmax_inputs(seed, b=2, c=3, h=20, w=20)
    got = lovasz.lovasz_softmax(x, t, bins=256, backend="torch", per_image=per_image, ignore_index=255,
                                classes="all", reduction="none")  # fmt: skip
    want = softmax_ref(x.double(), t, per_image=per_image, ignore_index=255, classes="all", reduction="none")
    p = Binning.for_bins(256).per_octave
    gap = want - got.double()
    assert (gap >= -1e-6).all(), gap
    assert (gap <= want / p + 2**-20 + 1e-6).all(), gap


CASES = [
    ("softmax", dict()),
    ("softmax", dict(per_image=True)),
    ("softmax", dict(ignore_index=255)),
    ("softmax", dict(per_image=True, ignore_index=255)),
    ("softmax", dict(from_logits=False)),
    ("hinge", dict()),
    ("hinge", dict(per_image=False, ignore_index=255)),
    ("sigmoid", dict(ignore_index=255)),
    ("sigmoid", dict(per_image=False, from_logits=False)),
]


def _case(kind, kw, seed=0, **size):
    if kind == "softmax":
        x, t = _softmax_inputs(seed, ignore="ignore_index" in kw, **size)
        if kw.get("from_logits", True) is False:
            x = x.softmax(1)
    else:
        x, t = _binary_inputs(seed, ignore="ignore_index" in kw, **size)
        if kw.get("from_logits", True) is False:
            x = x.sigmoid()
    return getattr(lovasz, f"lovasz_{kind}"), x, t


def _surrogate(kind, kw):
    logits = kw.get("from_logits", True)
    if kind == "softmax":
        return lovasz.surrogates.SOFTMAX if logits else lovasz.surrogates.PROBS
    return HINGE if kind == "hinge" else SIGMOID if logits else SIGMOID_PROBS


@pytest.mark.parametrize("kind,kw", CASES)
def test_equals_the_error_matrix_engine(kind, kw):
    # The same histogram, table and head as the engine on materialized errors (lovasz_binned_counts): the
    # same group losses and gradient.
    _, x, t = _case(kind, kw, h=40, w=50)
    s = _surrogate(kind, kw)
    per_image = kw.get("per_image", kind != "softmax")
    ignore_index = kw.get("ignore_index")
    b, c = x.shape[0], (x.shape[1] if kind == "softmax" else 1)
    t3 = t.reshape(b, -1) if kind == "softmax" else t.reshape(b, 1, -1)
    binning = Binning.for_bins(BINS)
    xr, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    groups = build_errors(s, xr.reshape(b, c, -1), t3, per_image=per_image, ignore_index=ignore_index)
    want, want_fg, want_valid = lovasz_binned_counts(groups.errors, groups.fg, groups.valid, binning)
    got, n_fg, n_valid = binned_scores(s, xs.reshape(b, c, -1), t3, per_image=per_image,
                                       ignore_index=ignore_index, binning=binning)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
    assert torch.equal(n_fg, want_fg) and torch.equal(n_valid, want_valid)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.skipif(not NATIVE, reason="the native kernels were not built")
@pytest.mark.parametrize("kind,kw", CASES)
def test_matches_the_native_kernels(kind, kw):
    fn, x, t = _case(kind, kw, seed=3, h=40, w=50)
    a, ga = _run(fn, x, t, bins=BINS, backend="torch", **kw)
    b, gb = _run(fn, x, t, bins=BINS, backend="native", **kw)
    # The kernels compute the probabilities with their own exponential: an error within an ulp of a bin edge
    # may land one bin away, which moves a few elements' weights slightly.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert (ga - gb).abs().max() <= 1e-2 * gb.abs().max()
    assert F.cosine_similarity(ga.flatten(), gb.flatten(), dim=0) > 0.9999


@pytest.mark.parametrize("kind,kw", CASES)
def test_gradcheck_float64_small(kind, kw):
    # At most HEAD elements per group: the exact head holds every element, the loss is piecewise linear
    # in the errors (no bin edge to cross), and float64 stays float64.
    fn, x, t = _case(kind, kw, seed=5, b=2, h=2, w=3)
    x64 = x.double().requires_grad_(True)
    assert fn(x64, t, bins=BINS, backend="torch", **kw).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda v: fn(v, t, bins=BINS, backend="torch", **kw), (x64,))
    if kind != "hinge":  # relu's second derivative is 0 but not smooth at the kink; softmax and sigmoid are
        assert torch.autograd.gradgradcheck(lambda v: fn(v, t, bins=BINS, backend="torch", **kw), (x64,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    x, t = _softmax_inputs(1, h=20, w=20)
    got, grad = _run(lovasz.lovasz_softmax, x.to(dtype), t, bins=BINS, backend="torch", ignore_index=255)
    want, want_grad = _run(lovasz.lovasz_softmax, x.to(dtype).float(), t, bins=BINS, backend="torch", ignore_index=255)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad.to(dtype))


@pytest.mark.parametrize("kind,kw", CASES)
def test_inputs_are_not_modified(kind, kw):
    fn, x, t = _case(kind, kw, h=9, w=9)
    x0, t0 = x.clone(), t.clone()
    _run(fn, x, t, bins=BINS, backend="torch", **kw)
    xr = x.requires_grad_(True)
    fn(xr, t, bins=BINS, backend="torch", **kw).backward()
    assert torch.equal(x.detach(), x0) and torch.equal(t, t0)


def _definition_bins(e: torch.Tensor, inv: torch.Tensor, binning: Binning) -> torch.Tensor:
    """The two-sided binning from its definition (float64, frexp) at ``x = fl32(e·inv)``."""
    x = (e.float() * inv).double()
    p, lo = binning.per_octave, binning.lo

    def log_bin(v):
        mantissa, exponent = torch.frexp(v)
        k = 1 + (exponent.long() - 1 - lo) * p + torch.floor((2 * mantissa - 1) * p).long()
        return torch.where(v < 2.0**lo, 0, k)

    low, up = log_bin(x.clamp(max=0.5)), log_bin((1 - x).clamp(0.0, 0.5))
    return torch.where(x < 0.5, low, binning.num_bins - 1 - up)


@pytest.mark.parametrize("bins", [16, 256, BINS, 64000])
def test_cells_are_the_bins_of_binning_index(bins):
    # Bit for bit, in int32 (int64 where P·2^23 overflows), including x exactly 1/2, x = 0, x just above 1
    # (rounding of e/U) and errors within an ulp of a bin edge.
    binning = Binning.for_bins(bins)
    g = torch.Generator().manual_seed(0)
    e = torch.cat(
        [torch.rand(4, 3000, generator=g) ** 9, 1 - torch.rand(4, 3000, generator=g) ** 14, torch.zeros(4, 2),
         torch.full((4, 2), 0.5), torch.ones(4, 2), torch.rand(4, 100, generator=g) * 0.6], dim=1)  # fmt: skip
    e[1] *= 7.3
    e[2] *= 3e-30
    e[3] = torch.nextafter(e[3], torch.tensor(2.0))
    inv = inverse_top(e.amax(1)).unsqueeze(1)
    inv[0] *= 1.0000001  # x slightly above 1 at the anchor
    want = _definition_bins(e, inv, binning)
    assert torch.equal(binning.index(e, inv), want)
    offsets = (torch.arange(4, dtype=torch.int32) * 2 * binning.num_bins).unsqueeze(1)
    cells = cell_codes(e, inv, offsets, binning)
    assert cells.dtype == torch.int32
    assert torch.equal(((cells - offsets) // 2).long(), want)
    assert torch.equal(cell_codes(e.double(), inv, offsets, binning), cells)


def test_sparse_tables_are_the_dense_tables(monkeypatch):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 4, (7, 300, 2), generator=g) * (torch.rand(7, 300, 1, generator=g) < 0.3)
    counts[2] = 0
    counts[4, :, 1] = 0
    n = torch.randint(0, 50, (7,), generator=g)
    monkeypatch.setattr(H, "SPARSE_TABLES", 1)
    sparse = [H.weight_tables(counts[..., 1], counts[..., 0]), H.weight_tables(counts[..., 1], counts[..., 0], n)]
    monkeypatch.setattr(H, "SPARSE_TABLES", 1 << 40)
    dense = [H.weight_tables(counts[..., 1], counts[..., 0]), H.weight_tables(counts[..., 1], counts[..., 0], n)]
    for a, b in zip(sparse, dense, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # count_tables: the table, counts and cut (the top bin crowded: an empty head; head = 0: no head)
    counts[3, -1, 0] = 100
    for head in (HEAD, 0, 5):
        monkeypatch.setattr(H, "SPARSE_TABLES", 1)
        sparse_tables = H.count_tables(counts, torch.float32, head)
        monkeypatch.setattr(H, "SPARSE_TABLES", 1 << 40)
        dense_tables = H.count_tables(counts, torch.float32, head)
        assert all(torch.equal(a, b) for a, b in zip(sparse_tables, dense_tables, strict=True))


@pytest.mark.parametrize("kind,kw", [CASES[1], CASES[3], CASES[5], CASES[7]])
def test_compiled_equals_eager(kind, kw):
    # Under torch.compile the counts come from scatter_add_, the head from topk and the cells from fused
    # arithmetic: the same value and gradient.
    fn, x, t = _case(kind, kw, h=30, w=40)
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, t: fn(v, t, bins=BINS, backend="torch", **kw), fullgraph=True)
    a, ga = _run(fn, x, t, bins=BINS, backend="torch", **kw)
    xc = x.clone().requires_grad_(True)
    b = compiled(xc, t)
    b.backward()
    torch.testing.assert_close(b.detach(), a, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(xc.grad, ga, rtol=1e-5, atol=1e-9)


def _held_bytes(fn, x, t) -> int:
    """Bytes the autograd graph keeps between forward and backward beyond the inputs, each storage once."""
    inputs = {x.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in inputs:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = fn(x, t)
    loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (1, 150, 128, 128)])
def test_held_memory_is_at_most_cross_entropys(per_image, dtype, shape):
    # Kept: the G × K table (8·K bytes a group) and, where it all fits in cross-entropy's log-probabilities,
    # a 2-byte cell code per element (150 classes of 128² per image: the table alone, cells recomputed).
    # The table is the floor: with float16 scores, 128² pixels and one image it alone exceeds
    # cross-entropy's 2 bytes an element (32.5 KB against 32 KB a class).
    b, c, h, w = shape
    if dtype == torch.float16 and 2 * b * h * w < 8 * BINS + 512:
        pytest.skip("the table alone exceeds cross-entropy's float16 log-probabilities")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3).to(dtype).requires_grad_(True)
    t = torch.randint(0, c, (b, h, w), generator=g)
    ce = _held_bytes(lambda v, t: F.cross_entropy(v, t), x, t)
    ours = _held_bytes(lambda v, t: lovasz.lovasz_softmax(v, t, bins=BINS, backend="torch", per_image=per_image), x, t)
    assert 0 < ours <= ce, (ours, ce)
