"""The binned engine: within-bin weights, the error bound, accuracy vs. the exact engine, and backends."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lovasz
from conftest import CPU_BACKENDS, CPU_FUSED
from lovasz.engine import Binning, cpu_threads, lovasz_binned, lovasz_exact, registry
from lovasz.engine.histogram import HEAD, Histogram, head_cut, histogram_losses, inverse_top, weight_tables
from reference import lovasz_extension_ref

BACKENDS = CPU_BACKENDS


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", request.param)
    return request.param


def _brute_force_weights(bins: list[int], fg: list[bool]) -> torch.Tensor:
    """Average over every order of the elements inside each bin (bins visited from high to low) of the
    exact Lovász weights, computed from the set function by the reference."""
    p = len(bins)
    total = torch.zeros(p, dtype=torch.float64)
    levels = sorted(set(bins), reverse=True)
    members = [[i for i in range(p) if bins[i] == lv] for lv in levels]
    count = 0
    for orders in itertools.product(*[itertools.permutations(m) for m in members]):
        order = [i for block in orders for i in block]
        # Strictly decreasing errors that realise this order; the gradient is the weight vector.
        e = torch.zeros(p, dtype=torch.float64)
        for rank, i in enumerate(order):
            e[i] = p - rank
        e.requires_grad_(True)
        lovasz_extension_ref(e, torch.tensor(fg)).backward()
        total += e.grad
        count += 1
    return total / count


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=7))
def test_within_bin_weights_are_the_average_over_orders(elements):
    bins = [b for b, _ in elements]
    fg = [f for _, f in elements]
    want = _brute_force_weights(bins, fg)
    # The weight table of the (bin, is_fg) counts, read back per element.
    counts = torch.zeros(1, 3, 2, dtype=torch.int64)
    for b, f in elements:
        counts[0, b, int(f)] += 1
    w_fg, w_bg = weight_tables(counts[..., 1], counts[..., 0])
    got = torch.stack([w_fg[0, b] if f else w_bg[0, b] for b, f in elements])
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)


def _reference_bins(e: torch.Tensor, binning: Binning) -> torch.Tensor:
    """The anchored two-sided binning written from its definition, in float64 with frexp."""
    x = (e.float() * inverse_top(e.amax(dim=1)).unsqueeze(1)).double()
    p, lo = binning.per_octave, binning.lo

    def log_bin(v):
        mantissa, exponent = torch.frexp(v)  # v = mantissa * 2^exponent, mantissa in [0.5, 1)
        idx = 1 + (exponent.long() - 1 - lo) * p + torch.floor((2 * mantissa - 1) * p).long()
        return torch.where(v < 2.0**lo, 0, idx)

    low = log_bin(x.clamp(max=0.5))
    up = log_bin((1 - x).clamp(0.0, 0.5))
    return torch.where(x < 0.5, low, binning.num_bins - 1 - up)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([64, 256, 4096]), st.floats(1e-3, 1e3))
def test_binning_is_monotone_and_matches_its_definition(seed, bins, scale):
    g = torch.Generator().manual_seed(seed)
    e = torch.rand(3, 200, generator=g) ** 4 * scale
    e[0, :5] = 0.0
    e[1] = e[1].amax()  # ties at the anchor
    binning = Binning.for_bins(bins)
    idx = binning.index(e, inverse_top(e.amax(dim=1)).unsqueeze(1))
    assert torch.equal(idx, _reference_bins(e, binning))
    assert idx.min() >= 0 and idx.max() < binning.num_bins
    order = e.argsort(dim=1)
    assert (idx.gather(1, order).diff(dim=1) >= 0).all()  # non-decreasing in the error
    # The anchor x = U·fl(1/U) is within 2^-24 of 1, so at lo = -24 it lies in the top bin or the next one.
    assert (idx.gather(1, e.argmax(dim=1, keepdim=True)) >= binning.num_bins - 2).all()


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(0, 2**31 - 1),
    st.sampled_from([64, 256, 4096]),
    st.floats(1e-3, 1e3),
    st.floats(0.0, 1.0),
)
def test_error_bound(p, seed, bins, scale, fg_rate):
    g = torch.Generator().manual_seed(seed)
    errors = torch.rand(4, p, generator=g, dtype=torch.float64) ** 3 * scale
    fg = torch.rand(4, p, generator=g) < fg_rate
    binning = Binning.for_bins(bins)
    exact = lovasz_exact(errors, fg)
    approx = lovasz_binned(errors, fg, None, binning)
    slack = exact / binning.per_octave + 2.0**binning.lo * errors.amax(dim=1)
    assert (approx <= exact * (1 + 1e-12) + 1e-12).all()
    assert (exact - approx <= slack * (1 + 1e-9) + 1e-12).all()


def _realistic(kind: str, seed: int, b=4, c=21, h=48, w=48):
    g = torch.Generator().manual_seed(seed)
    if kind == "imbalanced":
        target = torch.where(torch.rand(b, h, w, generator=g) < 0.9, 0, torch.randint(0, c, (b, h, w), generator=g))
    else:
        target = torch.randint(0, c, (b, h, w), generator=g)
    logits = torch.randn(b, c, h, w, generator=g) * 4
    if kind == "peaked":  # like a trained network: confident, mostly right, most errors near 0
        logits = torch.randn(b, c, h, w, generator=g)
        logits.scatter_add_(1, target[:, None], torch.full((b, 1, h, w), 10.0))
        wrong = torch.rand(b, h, w, generator=g) < 0.1
        logits[:, 0][wrong] += 12.0
    return logits, target


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", ["random", "peaked", "imbalanced"])
@pytest.mark.parametrize("per_image", [False, True])
def test_default_bins_match_exact_engine(backend, kind, per_image):
    logits, target = _realistic(kind, seed=len(kind))
    x_exact = logits.clone().requires_grad_(True)
    x_fast = logits.clone().requires_grad_(True)
    exact = lovasz.lovasz_softmax(x_exact, target, per_image=per_image, bins=None)
    fast = lovasz.lovasz_softmax(x_fast, target, per_image=per_image, bins=lovasz.DEFAULT_BINS)
    exact.backward()
    fast.backward()
    p = Binning.for_bins(lovasz.DEFAULT_BINS).per_octave
    assert abs(exact.item() - fast.item()) <= exact.item() / p + 2.0 ** Binning.for_bins(lovasz.DEFAULT_BINS).lo + 1e-6
    assert _cosine(x_exact.grad, x_fast.grad) >= 0.999


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", ["hinge", "sigmoid"])
def test_binary_default_bins_match_exact(backend, kind):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 40, 40, generator=g) * 3
    target = (torch.rand(4, 3, 40, 40, generator=g) < 0.2).long()
    fn = getattr(lovasz, f"lovasz_{kind}")
    xe, xf = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    exact, fast = fn(xe, target), fn(xf, target, bins=lovasz.DEFAULT_BINS)
    exact.backward()
    fast.backward()
    assert abs(exact.item() - fast.item()) <= 0.01 * exact.item() + 1e-4
    assert _cosine(xe.grad, xf.grad) >= 0.999


def _random_call(seed: int):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    kind = rng.choice(["softmax", "softmax", "hinge", "sigmoid"])
    b = rng.randint(1, 3)
    spatial = rng.choice([(), (9,), (5, 6), (2, 3, 4)])
    ignore_index = rng.choice([None, 255])
    kwargs = dict(
        per_image=rng.random() < 0.5, ignore_index=ignore_index, reduction=rng.choice(["mean", "sum", "none"])
    )
    if kind == "softmax":
        c = rng.randint(1, 6)
        x = torch.randn((b, c, *spatial), generator=g) * rng.choice([0.5, 3.0, 8.0])
        t = torch.randint(0, c, (b, *spatial), generator=g)
        kwargs.update(
            classes=rng.choice(["present", "all", [0]]),
            weight=None if rng.random() < 0.5 else [rng.uniform(0.5, 2) for _ in range(c)],
            from_logits=rng.random() < 0.8,
        )
        if not kwargs["from_logits"]:
            x = x.softmax(1)
        fn = lovasz.lovasz_softmax
    else:
        c = rng.choice([1, 3])
        shape = (b, c, *(spatial or (4,)), 2) if c > 1 else (b, *(spatial or (5,)))
        x = torch.randn(shape, generator=g) * 3
        t = torch.randint(0, 2, shape, generator=g)
        fn = getattr(lovasz, f"lovasz_{kind}")
        if kind == "sigmoid" and rng.random() < 0.3:
            kwargs["from_logits"] = False
            x = x.sigmoid()
    if ignore_index is not None:
        t = t.masked_fill(torch.rand(t.shape, generator=g) < 0.3, ignore_index)
    return fn, x, t, kwargs


def assert_backends_agree(fn, kwargs, got, got_grad, want, want_grad):
    """Bitwise-equal errors (probabilities in, or hinge) must give the same result; from logits, each
    backend's own exp may move an error across a bin edge by one ulp, so agreement is looser."""
    same_errors = fn is lovasz.lovasz_hinge or kwargs.get("from_logits", True) is False
    tol = dict(atol=1e-5, rtol=1e-5) if same_errors else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got, want, **tol)
    grad_tol = dict(atol=1e-6, rtol=1e-4) if same_errors else dict(atol=2e-3, rtol=0.0)
    torch.testing.assert_close(got_grad, want_grad, **grad_tol)


def _run(fn, x, t, kwargs, bins):
    xg = x.clone().requires_grad_(True)
    out = fn(xg, t, bins=bins, **kwargs)
    out.sum().backward()
    return out.detach(), xg.grad


@pytest.mark.parametrize("fused", CPU_FUSED)
@pytest.mark.parametrize("seed", range(60))
def test_cpu_kernels_match_pytorch_binned_engine(seed, fused, monkeypatch):
    fn, x, t, kwargs = _random_call(seed)
    monkeypatch.setenv("LOVASZ_BACKEND", "torch")
    want, want_grad = _run(fn, x, t, kwargs, 256)
    exact, _ = _run(fn, x, t, kwargs, None)
    monkeypatch.setenv("LOVASZ_BACKEND", fused)
    got, got_grad = _run(fn, x, t, kwargs, 256)
    assert_backends_agree(fn, kwargs, got, got_grad, want, want_grad)
    assert (got <= exact + 1e-5).all()


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("seed", range(0, 60, 3))
def test_native_backward_with_or_without_kept_errors_gives_the_same_bits(seed, monkeypatch):
    # LOVASZ_KEEP_ERRORS=1: backward reads the kept errors; =0: it recomputes the probabilities from the
    # scores (nothing of the input's size is kept).  The same bits.
    fn, x, t, kwargs = _random_call(seed)
    monkeypatch.setenv("LOVASZ_BACKEND", "native")
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "1")
    want, want_grad = _run(fn, x, t, kwargs, 256)
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "0")
    xg = x.clone().requires_grad_(True)
    got = fn(xg, t, bins=256, **kwargs)
    monkeypatch.delenv("LOVASZ_KEEP_ERRORS")  # decided in forward: backward follows what forward saved
    got.sum().backward()
    got, got_grad = got.detach(), xg.grad
    assert torch.equal(got, want)
    assert torch.equal(got_grad, want_grad)


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("keep", ["0", "1"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_native_softmax_backward_does_not_depend_on_its_span(keep, per_image, from_logits, monkeypatch):
    # The softmax backwards work class by class over spans of kernels_native.SPAN pixels; a span of one
    # block (256) is the order the kernels had before.  Uneven spans (3000 pixels) and void labels.
    from lovasz.engine import kernels_native

    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 3000, generator=g) * 3
    x = x if from_logits else x.softmax(1)
    t = torch.randint(0, 5, (3, 3000), generator=g).masked_fill(torch.rand(3, 3000, generator=g) < 0.2, 255)
    monkeypatch.setenv("LOVASZ_BACKEND", "native")
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", keep)
    grads = []
    for span in (256, 2048, kernels_native.SPAN):
        monkeypatch.setattr(kernels_native, "SPAN", span)
        xg = x.clone().requires_grad_(True)
        lovasz.lovasz_softmax(
            xg, t, bins=lovasz.DEFAULT_BINS, per_image=per_image, ignore_index=255, from_logits=from_logits
        ).backward()
        grads.append(xg.grad)
    assert grads[0].abs().sum() > 0
    for grad in grads[1:]:
        assert torch.equal(grad, grads[0])


def _held_bytes(fn, x, t) -> int:
    """What the autograd graph keeps for backward beyond the inputs (each storage once)."""
    inputs = {x.untyped_storage().data_ptr(), t.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in inputs:
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = fn(x, t)
    loss.backward()
    return sum(seen.values())


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
def test_native_backward_without_kept_errors_holds_less_than_cross_entropy(monkeypatch):
    # LOVASZ_KEEP_ERRORS=0 keeps the weight table only; cross-entropy keeps C floats a pixel.
    x = torch.randn(2, 8, 128, 128, requires_grad=True)
    t = torch.randint(0, 8, (2, 128, 128))
    ce = _held_bytes(torch.nn.functional.cross_entropy, x, t)
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "1")
    kept = _held_bytes(lambda z, y: lovasz.lovasz_softmax(z, y, bins=lovasz.DEFAULT_BINS, backend="native"), x, t)
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", "0")
    lean = _held_bytes(lambda z, y: lovasz.lovasz_softmax(z, y, bins=lovasz.DEFAULT_BINS, backend="native"), x, t)
    monkeypatch.delenv("LOVASZ_KEEP_ERRORS")
    default = _held_bytes(lambda z, y: lovasz.lovasz_softmax(z, y, bins=lovasz.DEFAULT_BINS), x, t)
    assert ce >= x.numel() * 4  # the log-probabilities
    assert kept > ce  # the kept errors, as large, and the table
    table = 8 * Binning.for_bins(lovasz.DEFAULT_BINS).num_bins * 2 * 4  # [G, K, 2] float32
    assert lean < ce and lean <= table + 8 * HEAD * 16 + 1024  # the table, the exact head and a few scalars
    assert default == lean  # the default keeps no errors either


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_binned_options_and_edge_cases(backend):
    x = torch.randn(2, 3, 5, 5)
    t = torch.full((2, 5, 5), 255)
    xg = x.clone().requires_grad_(True)
    loss = lovasz.lovasz_softmax(xg, t, ignore_index=255, bins=256)
    loss.backward()
    assert loss.item() == 0 and torch.count_nonzero(xg.grad) == 0
    half = torch.randn(2, 4, 8, 8).half().requires_grad_(True)
    target = torch.randint(0, 4, (2, 8, 8))
    out = lovasz.lovasz_softmax(half, target, bins=1024)
    out.backward()
    assert out.dtype == torch.float32 and half.grad.dtype == torch.float16
    ref = lovasz.lovasz_softmax(half.detach().float(), target, bins=1024)
    assert abs(out.item() - ref.item()) < 1e-6
    cl = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    a = lovasz.lovasz_softmax(cl, target, bins=1024)
    b = lovasz.lovasz_softmax(cl.contiguous(), target, bins=1024)
    assert a.item() == b.item()


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_binned_is_deterministic(backend):
    x = torch.randn(4, 6, 32, 32)
    t = torch.randint(0, 6, (4, 32, 32))
    runs = [_run(lovasz.lovasz_softmax, x, t, {}, 4096) for _ in range(3)]
    for loss, grad in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(grad, runs[0][1])


@pytest.mark.parametrize("fused", CPU_FUSED)
@pytest.mark.parametrize("per_image", [False, True])
def test_cpu_kernel_results_do_not_depend_on_threads_or_the_thread_runtime(monkeypatch, per_image, fused):
    # OpenMP's team (the default where PyTorch uses OpenMP) or a thread pool, 1 or 3 threads: bit for bit.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 40, 40, generator=g) * 3
    t = torch.randint(0, 5, (3, 40, 40), generator=g)
    xb, tb = torch.randn(4, 1, 30, 30, generator=g), (torch.rand(4, 1, 30, 30, generator=g) < 0.3).long()
    kw = dict(backend=fused, per_image=per_image)
    threads = torch.get_num_threads()
    runs = []
    try:
        for runtime, n in [("openmp", 2), ("pool", 2), ("pool", 3), ("openmp", 1), ("openmp", 3)]:
            monkeypatch.setenv("LOVASZ_THREADS", runtime)
            torch.set_num_threads(n)
            runs.append(_run(lovasz.lovasz_softmax, x, t, kw, 4096) + _run(lovasz.lovasz_hinge, xb, tb, kw, 4096))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0], strict=True))
    if "parallel backend: OpenMP" in torch.__config__.parallel_info() and os.path.exists("/proc/self/maps"):
        assert cpu_threads.OpenMP().lib is not None  # the first runtime above really was OpenMP's team


def test_float64_uses_pytorch_engine_and_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 4, 4), generator=g)
    assert torch.autograd.gradcheck(lambda z: lovasz.lovasz_softmax(z, t, bins=4096), (x,), eps=1e-8, atol=1e-6)


def test_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("LOVASZ_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="LOVASZ_BACKEND"):
        lovasz.lovasz_softmax(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), bins=256)


@pytest.mark.parametrize("fused", CPU_FUSED)
@pytest.mark.parametrize("seed", range(6))
def test_cpu_tables_match_digamma_tables(seed, fused):
    kernels = registry.load_kernels(fused)
    g = torch.Generator().manual_seed(seed)
    groups, k = 5, Binning(-20, 8).num_bins
    scale = [3, 50, 5000, 10**6, 2, 0][seed]
    density = torch.rand(groups, k, 2, generator=g) < 0.4
    counts = (torch.rand(groups, k, 2, generator=g, dtype=torch.float64) * scale).floor() * density
    counts[0] = 0  # an empty group
    counts[1, :, 1] = 0  # a group without foreground
    sums = counts * torch.rand(groups, k, 2, generator=g, dtype=torch.float64)
    half = (counts / 2).floor()
    acc = torch.stack(
        [torch.stack([half.double(), sums / 2], dim=-1), torch.stack([(counts - half).double(), sums / 2], dim=-1)]
    )  # two partial slots, as the batch-mode kernels produce
    losses, table, n_fg, n_valid, cut = kernels.tables(acc.numpy(), 0)  # head 0: no element in the head
    hist = Histogram(acc, torch.zeros(groups), Binning(-20, 8))
    assert cut.tolist() == head_cut(hist, 0).tolist()
    w_fg, w_bg = weight_tables(counts[..., 1], counts[..., 0])
    torch.testing.assert_close(torch.from_numpy(table[..., 1]).double(), w_fg, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(table[..., 0]).double(), w_bg, rtol=1e-6, atol=1e-12)
    want = (w_fg * sums[..., 1] + w_bg * sums[..., 0]).sum(1)
    # rtol: at counts ~1e6 the digamma difference itself loses ~1e-8 to cancellation.
    torch.testing.assert_close(torch.from_numpy(losses), want, rtol=1e-7, atol=1e-12)
    assert n_fg.tolist() == counts[..., 1].sum(1).long().tolist()
    assert n_valid.tolist() == counts.sum((1, 2)).long().tolist()
    # With an exact head, the same cut, losses and table as the PyTorch tables.
    got = kernels.tables(acc.numpy(), HEAD)
    want = histogram_losses(hist, head=HEAD)
    assert got[4].tolist() == want[4].tolist()
    torch.testing.assert_close(torch.from_numpy(got[1]), want[1], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(got[0]), want[0], rtol=1e-7, atol=1e-12)


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("per_image", [False, True])
def test_native_head_weights_match_head_weights(seed, per_image):
    # The native group_tables weights each group's exact head in C; histogram.head_weights (PyTorch,
    # digamma) is the definition.  Integer logits make ties in the head, and few pixels per group make
    # heads that hold whole groups, with and without foreground.
    from lovasz import surrogates
    from lovasz.engine import kernels_native
    from lovasz.engine.histogram import head_weights

    g = torch.Generator().manual_seed(seed)
    b, c, n = 3, 4, [5, 40, 300, 3000][seed % 4]
    x = torch.randint(-2, 3, (b, c, n), generator=g).float() * [1.0, 0.5][seed % 2]
    t = torch.randint(0, c - 1, (b, n), generator=g)  # class c-1 absent: groups without foreground
    errors = torch.empty_like(x)
    out = kernels_native.losses(
        x, t, surrogates.SOFTMAX, per_image, None, Binning.for_bins(lovasz.DEFAULT_BINS), HEAD, errors
    )
    values, fg, weights = out.head_values, out.head_fg, out.head_weights  # values -1 past each head
    assert (values >= 0).any(dim=1).all()  # every group has a head
    want = head_weights(values, fg, values >= 0, out.n_fg)
    torch.testing.assert_close(weights.double(), want, rtol=1e-6, atol=1e-9)
    # (That the losses include the head's part is checked against the PyTorch engine's losses by
    # test_cpu_kernels_match_pytorch_binned_engine.)


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("keep", ["0", "1"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
def test_native_leaves_out_absent_classes_without_changing_the_result(keep, per_image, from_logits, monkeypatch):
    # With classes="present" the native kernels leave the groups without a foreground label out of pass 2
    # and backward.  Value and gradient must be those of computing every group (skips_absent off), for
    # every class selection and reduction that can reach the kernels with the flag.
    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", keep)
    g = torch.Generator().manual_seed(3)
    b, c, h, w = 3, 9, 24, 40
    x = torch.randn(b, c, h, w, generator=g) * 3
    if not from_logits:
        x = x.softmax(1)
    t = torch.randint(0, 4, (b, h, w), generator=g)  # classes 4..8 absent everywhere
    t[1] = torch.randint(2, 7, (h, w), generator=g)  # per image, a different set is present
    t[2, :5] = 255
    weight = torch.rand(c, generator=g) + 0.5
    results = {}
    for skips in (True, False):
        entry = registry.REGISTRY["native"]
        caps = dataclasses.replace(entry.capabilities, skips_absent=skips)
        monkeypatch.setitem(registry.REGISTRY, "native", dataclasses.replace(entry, capabilities=caps))
        for reduction in ("mean", "sum", "none"):
            for wt in (None, weight):
                xx = x.clone().requires_grad_(True)
                loss = lovasz.lovasz_softmax(xx, t, bins=lovasz.DEFAULT_BINS, per_image=per_image,
                                             ignore_index=255, weight=wt, from_logits=from_logits,
                                             reduction=reduction, backend="native")  # fmt: skip
                loss.sum().backward()
                results[skips, reduction, wt is None] = (loss.detach(), xx.grad)
    for key in [k for k in results if k[0]]:
        got, want = results[key], results[(False, *key[1:])]
        assert torch.equal(got[0], want[0]), key
        assert torch.equal(got[1], want[1]), key


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("per_image", [False, True])
def test_native_present_only_marks_exactly_the_absent_groups(per_image):
    from lovasz import surrogates
    from lovasz.engine import kernels_native

    g = torch.Generator().manual_seed(5)
    b, c, n = 4, 6, 700
    x = torch.randn(b, c, n, generator=g)
    t = torch.randint(0, 3, (b, n), generator=g)
    t[0] = 4
    t[3, :100] = -100
    binning = Binning.for_bins(lovasz.DEFAULT_BINS)
    full, skipped = (
        kernels_native.losses(
            x, t, surrogates.SOFTMAX, per_image, -100, binning, HEAD, torch.empty_like(x), present_only=p
        )
        for p in (False, True)
    )
    n_fg, n_valid, cut = full.n_fg, full.n_valid, full.cut
    absent = n_fg == 0
    assert absent.any() and not absent.all()
    assert torch.equal(skipped.n_fg, n_fg) and torch.equal(skipped.n_valid, n_valid)
    assert torch.equal(skipped.cut == -1, absent)
    assert torch.equal(skipped.cut[~absent], cut[~absent])
    assert torch.equal(skipped.losses[~absent], full.losses[~absent]) and (skipped.losses[absent] == 0).all()
    assert torch.equal(skipped.head_weights[~absent], full.head_weights[~absent])


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("n", [4 * 700, 4 * 700 + 3])  # rows 16-byte aligned, or not (the scalar tail)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("keep", ["0", "1"])
def test_native_streaming_stores_write_the_same_bits(n, per_image, from_logits, keep, monkeypatch):
    # Large buffers get pass 1's errors and the softmax backwards' gradient through non-temporal stores
    # (STREAM_MIN_BYTES); forcing them on a small input must give the same errors, anchors and counts, and
    # the same loss and gradient, with either backward and with a class left out (class 5 is absent).
    from lovasz import surrogates
    from lovasz.engine import kernels_native

    monkeypatch.setenv("LOVASZ_KEEP_ERRORS", keep)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 6, n, generator=g) * 3
    if not from_logits:
        x = x.softmax(1)
    t = torch.randint(0, 5, (3, n), generator=g)
    t[1, :50] = 255
    s = surrogates.SOFTMAX if from_logits else surrogates.PROBS
    out = {}
    for streaming in (False, True):
        monkeypatch.setattr(kernels_native, "STREAM_MIN_BYTES", 0 if streaming else 1 << 62)
        errors = torch.full_like(x, float("nan"))
        bits, top, _, fg, valid = kernels_native._pass1(x, t, s, per_image, 255, errors, None, counts=True)
        xx = x.clone().requires_grad_(True)
        loss = lovasz.lovasz_softmax(xx, t, bins=lovasz.DEFAULT_BINS, per_image=per_image,
                                     ignore_index=255, from_logits=from_logits, backend="native")  # fmt: skip
        loss.backward()
        out[streaming] = (bits.view(torch.int32), top, fg, valid, loss.detach(), xx.grad)
    for a, b in zip(out[False], out[True], strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_holds_no_copy_of_flat_points_or_2_byte_scores(dtype):
    # Flat points [N, C] over the batch reach the kernels as a transposed [1, C, N] view, and 2-byte scores
    # as float32: either needs a copy, which forward and backward each make and the graph does not keep.
    x = torch.randn(20000, 8).to(dtype).requires_grad_(True)
    t = torch.randint(0, 8, (20000,))
    held = _held_bytes(lambda z, y: lovasz.lovasz_softmax(z, y, bins=lovasz.DEFAULT_BINS, backend="native"), x, t)
    table = 8 * Binning.for_bins(lovasz.DEFAULT_BINS).num_bins * 2 * 4  # [G, K, 2] float32
    assert held <= table + 8 * HEAD * 16 + 1024 < x.numel() * 4  # the table, the exact head and a few scalars
