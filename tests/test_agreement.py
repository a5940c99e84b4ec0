"""Definitions that the C kernels and the PyTorch engine must share bit for bit, compared directly
(docs/engine.md lists them; the Triton kernels' side is in tests/triton_cases.py), and the C kernels'
argument counts."""

from __future__ import annotations

import ctypes
import pathlib
import re

import pytest
import torch

import lovasz
from lovasz import surrogates
from lovasz.engine import registry
from lovasz.engine.histogram import Binning, inverse_top

needs_native = pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
SOURCE = pathlib.Path(lovasz.__file__).parent / "engine" / "_native.c"


def _edge_and_random_errors(top: float, lo: int, n_random: int, seed: int) -> torch.Tensor:
    """float32 errors in ``[0, top]``: each bin boundary's neighbours (the powers of two around ``2^lo``,
    ``1/2`` and ``1 - 2^lo`` of ``top``), denormals, 0 and ``top``, and random bit patterns."""
    f32 = torch.float32
    edges = [0.0, 1e-45, 1e-40, 2.0**lo, 2.0 ** (lo - 1), 0.25, 0.5, 0.75, 1.0 - 2.0**lo, 1.0 - 2.0**-23, 1.0]
    x = torch.tensor(edges, dtype=f32)
    x = torch.cat([x, torch.nextafter(x, torch.zeros_like(x)), torch.nextafter(x, torch.ones_like(x))]).clamp(0, 1)
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 0x3F800000 + 1, (n_random,), generator=g, dtype=torch.int64).to(torch.int32)
    e = torch.cat([x * top, bits.view(f32) * top]).to(f32)  # errors, up to the anchor
    return torch.cat([e, torch.tensor([top], dtype=f32)]).clamp(0, top)


@needs_native
@pytest.mark.parametrize("bins", [256, lovasz.DEFAULT_BINS, 40_000])  # the last: per_octave >= 512 (64-bit path)
@pytest.mark.parametrize("top", [1.0, 0.7, 3.3e-5, 7.5, 1e30])
def test_native_bin_index_equals_binning_index(bins, top):
    # The C kernels' bin of an error (bin_of, from the float32 bits of e·(1/U)) against Binning.index, the
    # PyTorch engine's: equal for every float32 tried.  head_rows returns each element's bin with its error
    # when the whole group is its head (cut 0, capacity N).
    from lovasz.engine import kernels_native

    binning = Binning.for_bins(bins)
    errors = torch.stack([_edge_and_random_errors(top, binning.lo, 20_000, seed) for seed in range(2)])
    n = errors.shape[1]
    top_t = errors.max(dim=1).values
    head = kernels_native.head(
        None, None, surrogates.SOFTMAX, True, None, binning, top_t, torch.zeros(2, dtype=torch.int64), n,
        errors=errors.unsqueeze(0).contiguous(),
    )  # fmt: skip
    assert (head.counts == n).all()
    want = binning.index(head.values, inverse_top(top_t).unsqueeze(1))
    assert torch.equal(head.bins, want)
    assert want.min() == 0 and want.max() == binning.num_bins - 1  # both ends reached


@needs_native
@pytest.mark.parametrize("surrogate", [surrogates.SOFTMAX, surrogates.SIGMOID, surrogates.HINGE])
def test_native_errors_match_pytorch_errors(surrogate):
    # Pass 1's errors (the C exp, Cephes expf) against the PyTorch error builders (torch.exp): equal up to
    # float32 rounding, which is why the engines agree to rounding, not bit for bit, in value and gradient.
    from lovasz.engine import kernels_native
    from lovasz.errors import build_errors

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 700, generator=g) * 6
    if surrogate.per_class:
        t = torch.randint(0, 5, (2, 700), generator=g)
    else:
        t = torch.randint(0, 2, (2, 5, 700), generator=g)
    kept = torch.empty_like(x)
    kernels_native.histogram(x, t, surrogate, True, None, Binning.for_bins(256), errors=kept)
    got = kept.view(torch.int32) & 0x7FFFFFFF  # drop the foreground sign bit
    want = build_errors(surrogate, x, t, per_image=True, ignore_index=None).errors.view(2, 5, 700)
    torch.testing.assert_close(got.view(torch.float32), want, rtol=2e-6, atol=2e-7)


def _source_arity() -> dict[str, int]:
    """Each kernel's argument count as its body in _native.c reads it (the largest ``a[i]``, plus one)."""
    lines = SOURCE.read_text().split("\n")
    arity = {}
    for i, line in enumerate(lines):
        m = re.search(r"void (\w+)\(const int64_t \*a, int64_t u0, int64_t u1\) \{", line)
        if m:
            end = lines.index("}", i)
            used = [int(k) for k in re.findall(r"\ba\[(\d+)\]", "\n".join(lines[i:end]))]
            arity[m.group(1)] = max(used) + 1
    return arity


def test_declared_arity_matches_what_each_c_kernel_reads():
    from lovasz.engine import kernels_native

    source = SOURCE.read_text()
    assert _source_arity() == kernels_native.ARITY
    table = re.search(r"static const int ARITY\[\] = \{([^}]*)\};", source).group(1)
    order = re.search(r"static const kernel_fn KERNELS\[\] = \{([^}]*)\};", source).group(1)
    c_arity = dict(zip(re.findall(r"\w+", order), (int(v) for v in table.split(",")), strict=True))
    assert c_arity == kernels_native.ARITY
    assert list(c_arity) == list(kernels_native.ARITY)  # the kernel index is the position in both


@needs_native
def test_library_exports_the_declared_arity_and_run_checks_the_count():
    from lovasz.engine import kernels_native

    lib = ctypes.CDLL(kernels_native.library_path())
    lib.lovasz_kernel_arity.restype = ctypes.c_int
    got = {name: lib.lovasz_kernel_arity(k) for k, name in enumerate(kernels_native.ARITY)}
    assert got == kernels_native.ARITY
    assert lib.lovasz_kernel_arity(len(kernels_native.ARITY)) == -1
    with pytest.raises(AssertionError, match="histogram_rows kernel takes 11 arguments, 9 were packed"):
        kernels_native._run("histogram_rows", 1, *range(9))


@needs_native
def test_a_library_with_other_argument_counts_is_refused_as_stale(monkeypatch):
    from lovasz.engine import kernels_native

    wrong = dict(kernels_native.ARITY, head_rows=kernels_native.ARITY["head_rows"] + 1)
    monkeypatch.setattr(kernels_native, "ARITY", wrong)
    monkeypatch.setattr(kernels_native, "STALE", "")
    assert kernels_native._load() is None
    assert "head_rows takes 16 (expected 17)" in kernels_native.STALE
    assert "reinstall lovasz" in kernels_native.STALE
