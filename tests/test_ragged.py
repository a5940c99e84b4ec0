"""Ragged batches (``batch=``, point clouds): the per-sample loss of flat points equals the loop over the
samples, in value and gradient, against the float64 reference (tests/reference.py) for the exact engine
and against the loss of each sample alone for the binned engine (the same groups, so the same bins);
with an empty (missing) sample, a one-point sample, a fully ignored sample and unsorted ids; and over
random partitions (hypothesis).  Every test runs on both roads of a ragged batch: one engine call per
sample (at most ``LOOP_SAMPLES`` samples, eager) and the (sample, class) groups of one call."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lovasz
from conftest import CPU_FUSED
from lovasz.engine import BackendNotSupportedError, registry
from reference import binary_ref, softmax_ref

C = 4
# Sample 1 is missing (no point), sample 2 has one point, sample 4 is fully ignored; ids are shuffled.
SIZES = [23, 0, 1, 40, 9, 17]
RAGGED_FUSED = [name for name in CPU_FUSED if registry.REGISTRY[name].capabilities.ragged_groups]
ENGINES = [(None, "auto"), (64, "torch")] + [(64, name) for name in RAGGED_FUSED]


@pytest.fixture(autouse=True, params=["sample by sample", "groups"])
def ragged_road(request, monkeypatch):
    """``groups``: no batch is small enough for the loop over samples (``LOOP_SAMPLES = 0``)."""
    if request.param == "groups":
        monkeypatch.setattr(lovasz.engine, "LOOP_SAMPLES", 0)
    return request.param


def _points(kind: str, seed: int = 0, sizes=SIZES, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    batch = batch[torch.randperm(batch.numel(), generator=g)]
    n = batch.numel()
    if kind == "softmax":
        x = torch.randn(n, C, generator=g, dtype=dtype) * 2
        t = torch.randint(0, C - 1, (n,), generator=g)  # class C - 1 absent everywhere
        t = t.masked_fill(torch.rand(n, generator=g) < 0.2, 255)
        t[batch == 4] = 255
        t[batch == 2] = 0  # the one-point sample is valid
        return x, t, batch
    shape = (n, C) if kind == "multilabel" else (n,)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    t = (torch.rand(shape, generator=g) < 0.4).long()
    t = t.masked_fill(torch.rand(shape, generator=g) < 0.2, 255)
    t[batch == 4] = 255
    t[batch == 2] = 1
    return x, t, batch


def _call(kind: str, x, t, **kw):
    if kind == "softmax":
        return lovasz.lovasz_softmax(x, t, ignore_index=255, **kw)
    fn = lovasz.lovasz_hinge if kind == "hinge" else lovasz.lovasz_sigmoid
    return fn(x, t, ignore_index=255, **kw)


def _ref_sample(kind: str, x, t, opts: dict):
    """The float64 reference loss of one sample's points (``None`` if it has no valid point)."""
    if not (t != 255).any():
        return None
    if kind == "softmax":
        return softmax_ref(x, t, per_image=False, ignore_index=255, **opts)
    xs, ts = (x.reshape(x.shape[0], -1, 1), t.reshape(t.shape[0], -1, 1))
    return binary_ref("hinge" if kind == "hinge" else "sigmoid", xs, ts, per_image=False, ignore_index=255)


def _loop(per_sample, batch: torch.Tensor, reduction: str, num_samples: int):
    """Per-sample losses (``per_sample(mask)``, ``None`` where the sample has no valid point) reduced as
    the per-image losses are: mean over the samples that count, their sum, or ``[S]`` with zeros."""
    values = [per_sample(batch == s) for s in range(num_samples)]
    zero = torch.zeros((), dtype=torch.float64)
    if reduction == "none":
        return torch.stack([zero if v is None else v.double() for v in values])
    got = [v.double() for v in values if v is not None]
    total = sum(got, zero)
    return total if reduction == "sum" else total / max(1, len(got))


SOFTMAX_OPTIONS = [
    dict(),
    dict(classes="all"),
    dict(classes=[0, 3], weight=[1.0, 2.0, 0.5, 3.0]),
    dict(weight=[1.0, 2.0, 0.5, 3.0]),
]


@pytest.mark.parametrize(
    ("kind", "options"),
    [("softmax", i) for i in range(len(SOFTMAX_OPTIONS))] + [("hinge", 0), ("sigmoid", 0), ("multilabel", 0)],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_exact_engine_equals_the_reference_loop_over_samples(kind, options, reduction):
    opts = SOFTMAX_OPTIONS[options]
    x, t, batch = _points(kind, seed=options)
    xg = x.clone().requires_grad_(True)
    loss_kind = "sigmoid" if kind == "multilabel" else kind
    got = _call(loss_kind, xg, t, per_image=True, batch=batch, bins=None, reduction=reduction, **opts)
    xr = x.clone().requires_grad_(True)
    want = _loop(lambda m: _ref_sample(kind, xr[m], t[m], opts), batch, reduction, len(SIZES))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (got * torch.arange(1, got.numel() + 1).view(got.shape)).sum().backward()
    (want * torch.arange(1, want.numel() + 1).view(want.shape)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["softmax", "hinge", "sigmoid", "multilabel"])
@pytest.mark.parametrize(("bins", "backend"), ENGINES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_both_engines_equal_the_loss_of_each_sample_alone(kind, bins, backend, reduction):
    x, t, batch = _points(kind, seed=3, dtype=torch.float32)
    loss_kind = "sigmoid" if kind == "multilabel" else kind
    opts = dict(bins=bins, backend=backend)
    xg = x.clone().requires_grad_(True)
    got = _call(loss_kind, xg, t, per_image=True, batch=batch, reduction=reduction, **opts)
    xl = x.clone().requires_grad_(True)

    def alone(m):
        if not (t[m] != 255).any():
            return None
        if kind == "multilabel":  # [n, C] points of one sample: C channels as a [n, C, 1] volume
            return _call(loss_kind, xl[m].unsqueeze(-1).unsqueeze(-1), t[m].unsqueeze(-1).unsqueeze(-1), **opts)
        return _call(loss_kind, xl[m], t[m], per_image=False, **opts)

    want = _loop(alone, batch, reduction, len(SIZES))
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(xg.grad, xl.grad, rtol=1e-5, atol=1e-7)


def test_samples_in_order_or_shuffled_give_the_same_losses():
    x, t, batch = _points("softmax", dtype=torch.float32)
    order = torch.argsort(batch, stable=True)
    for bins in (None, 64):
        opts = dict(per_image=True, ignore_index=255, bins=bins, reduction="none")
        shuffled = lovasz.lovasz_softmax(x, t, batch=batch, **opts)
        ordered = lovasz.lovasz_softmax(x[order], t[order], batch=batch[order], **opts)
        torch.testing.assert_close(shuffled, ordered, rtol=1e-6, atol=1e-7)


def test_missing_and_fully_ignored_samples_are_zero_and_skipped():
    x, t, batch = _points("softmax")
    none = lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255, reduction="none")
    assert none.shape == (len(SIZES),)
    assert none[1] == 0 and none[4] == 0  # no point; every point ignored
    assert (none[[0, 2, 3, 5]] > 0).all()
    mean = lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255)
    torch.testing.assert_close(mean, none[[0, 2, 3, 5]].mean())
    # Ids past the last sample are samples too: S = max id + 1.
    extra = lovasz.lovasz_softmax(x, t, batch=batch + 2, per_image=True, ignore_index=255, reduction="none")
    torch.testing.assert_close(extra, torch.cat([none.new_zeros(2), none]))


def test_without_per_image_batch_is_the_union_of_all_points():
    x, t, batch = _points("softmax")
    for reduction in ("mean", "none"):
        with_batch = lovasz.lovasz_softmax(x, t, batch=batch, ignore_index=255, reduction=reduction)
        without = lovasz.lovasz_softmax(x, t, ignore_index=255, reduction=reduction)
        torch.testing.assert_close(with_batch, without)


def test_a_batch_of_one_sample_is_the_loss_of_all_points():
    x, t, _ = _points("softmax")
    one = torch.zeros(x.shape[0], dtype=torch.long)
    for bins in (None, 64):
        ragged = lovasz.lovasz_softmax(x.float(), t, batch=one, per_image=True, ignore_index=255, bins=bins)
        whole = lovasz.lovasz_softmax(x.float(), t, ignore_index=255, bins=bins, backend="torch")
        torch.testing.assert_close(ragged, whole)


def test_batch_loss_differs_from_the_union_so_the_comparison_can_fail():
    x, t, batch = _points("softmax")
    per_sample = lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255)
    union = lovasz.lovasz_softmax(x, t, ignore_index=255)
    assert abs(float(per_sample) - float(union)) > 1e-3


@st.composite
def partitions(draw):
    sizes = draw(st.lists(st.integers(0, 12), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**31 - 1))
    ignored = draw(st.floats(0.0, 0.6))
    return sizes, seed, ignored


@settings(max_examples=40, deadline=None)
@given(partitions(), st.sampled_from(ENGINES), st.sampled_from(["softmax", "hinge", "sigmoid"]))
def test_random_partitions_equal_the_loop_over_samples(data, engine, kind):
    sizes, seed, ignored = data
    if sum(sizes) == 0:
        sizes = [*sizes, 1]
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    batch = batch[torch.randperm(batch.numel(), generator=g)]
    n = batch.numel()
    if kind == "softmax":
        x = torch.randn(n, C, generator=g)
        t = torch.randint(0, C, (n,), generator=g)
    else:
        x = torch.randn(n, generator=g)
        t = torch.randint(0, 2, (n,), generator=g)
    t = t.masked_fill(torch.rand(n, generator=g) < ignored, 255)
    bins, backend = engine
    xg = x.clone().requires_grad_(True)
    got = _call(kind, xg, t, per_image=True, batch=batch, bins=bins, backend=backend, reduction="none")
    xl = x.clone().requires_grad_(True)

    def alone(m):
        if not (t[m] != 255).any():
            return None
        return _call(kind, xl[m], t[m], per_image=False, bins=bins, backend=backend)

    num_samples = int(batch.max()) + 1  # trailing empty samples do not exist: S = max id + 1
    want = _loop(alone, batch, "none", num_samples) + 0 * xl.sum()  # connected even with no valid sample
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)
    weights = torch.rand(num_samples, generator=g)
    (got * weights).sum().backward()
    (want * weights.double()).sum().backward()
    torch.testing.assert_close(xg.grad, xl.grad, rtol=1e-5, atol=1e-7)


def test_float64_gradcheck_of_the_exact_engine():
    x, t, batch = _points("softmax", sizes=[4, 0, 1, 5])
    x = x.clone().requires_grad_(True)
    fn = lambda v: lovasz.lovasz_softmax(v, t, batch=batch, per_image=True, ignore_index=255, bins=None)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


def test_modules_take_batch():
    x, t, batch = _points("softmax", dtype=torch.float32)
    want = lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255)
    got = lovasz.LovaszSoftmaxLoss(per_image=True, ignore_index=255)(x, t, batch)
    torch.testing.assert_close(got, want)
    xb, tb, bb = _points("hinge", dtype=torch.float32)
    want = lovasz.lovasz_hinge(xb, tb, batch=bb, ignore_index=255, reduction="none")
    torch.testing.assert_close(lovasz.LovaszHingeLoss(ignore_index=255, reduction="none")(xb, tb, bb), want)
    want = lovasz.lovasz_sigmoid(xb, tb, batch=bb, per_image=True, ignore_index=255)
    torch.testing.assert_close(lovasz.LovaszSigmoidLoss(per_image=True, ignore_index=255)(xb, tb, bb), want)
    combined = lovasz.CrossEntropyLovaszLoss(per_image=True, ignore_index=255)
    ce = torch.nn.functional.cross_entropy(x, t, ignore_index=255)
    term = lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255)
    torch.testing.assert_close(combined(x, t, batch), ce + term)


def test_a_backend_without_ragged_groups_says_so_and_auto_skips_it(monkeypatch):
    import dataclasses

    x, t, batch = _points("softmax", dtype=torch.float32, sizes=[3000, 2000])
    for spec in registry.REGISTRY.values():  # every backend serves ragged batches
        assert not any("batch=" in r for r in spec.not_supported_reasons(x, 256, "softmax", ragged=True))
    native = registry.REGISTRY["native"]
    if native.missing():
        pytest.skip("the native kernels are not built")
    lacking = dataclasses.replace(native, capabilities=dataclasses.replace(native.capabilities, ragged_groups=False))
    monkeypatch.setitem(registry.REGISTRY, "native", lacking)
    assert any("batch=" in r for r in lacking.not_supported_reasons(x, 256, "softmax", ragged=True))
    with pytest.raises(BackendNotSupportedError, match="batch="):
        lovasz.lovasz_softmax(x, t, batch=batch, per_image=True, ignore_index=255, bins=256, backend="native")
    assert lovasz.explain(x, per_image=True, batch=batch).backend == "torch"
    # Without per_image the ids are only checked: the backend serves the union of the points.
    assert lovasz.explain(x, per_image=False, batch=batch).backend == "native"


@pytest.mark.parametrize(("bins", "backend"), ENGINES)
def test_compiled_ragged_loss_equals_eager(bins, backend):
    torch._dynamo.reset()
    x, t, batch = _points("softmax", dtype=torch.float32)

    def fn(v):
        return lovasz.lovasz_softmax(v, t, batch=batch, per_image=True, ignore_index=255, bins=bins, backend=backend)

    compiled = torch.compile(fn)
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    lc, le = compiled(xc), fn(xe)
    torch.testing.assert_close(lc, le, rtol=1e-6, atol=1e-6)
    lc.backward()
    le.backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-7)


def test_inputs_are_not_modified():
    x, t, batch = _points("softmax", dtype=torch.float32)
    copies = (x.clone(), t.clone(), batch.clone())
    for bins in (None, 64):
        xg = x.requires_grad_(True)
        lovasz.lovasz_softmax(xg, t, batch=batch, per_image=True, ignore_index=255, bins=bins).backward()
    assert torch.equal(x.detach(), copies[0]) and torch.equal(t, copies[1]) and torch.equal(batch, copies[2])


def test_pointcloud_example_trains(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "pointcloud.py"
    spec = importlib.util.spec_from_file_location("pointcloud_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(steps=20)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    first, last = (float(line.split()[5]) for line in (lines[0], lines[-1]))  # CE + Lovász
    assert last < first
