"""Checks of the Triton kernels on the CPU, under Triton's interpreter: run by
tests/test_triton_interpreter.py in a process started with ``TRITON_INTERPRET=1`` (Triton reads it when its
kernels are defined), never collected on their own (the file name does not start with ``test_``).

Importing this module loads nothing beyond torch and lovasz; Triton is imported by the checks.
"""

from __future__ import annotations

import torch

import lovasz
from lovasz.engine.histogram import Binning, inverse_top

BACKEND = "triton"


def test_interpreter_is_on():
    from lovasz.engine import backends, config

    assert config.settings().triton_interpret, "run with TRITON_INTERPRET=1 (tests/test_triton_interpreter.py)"
    assert backends.resolve("auto", torch.randn(1, 2, 4), 256).name == BACKEND


def test_triton_matches_pytorch_binned_engine():
    # The random calls of tests/test_binned.py (every loss, options, per image or not, ignore labels): the
    # Triton kernels against the PyTorch binned engine, in value and gradient, and below the exact loss.
    from test_binned import _random_call, _run, assert_backends_agree

    for seed in range(40):
        fn, x, t, kwargs = _random_call(seed)
        want, want_grad = _run(fn, x, t, dict(kwargs, backend="torch"), 256)
        exact, _ = _run(fn, x, t, kwargs, None)
        got, got_grad = _run(fn, x, t, dict(kwargs, backend=BACKEND), 256)
        assert_backends_agree(fn, kwargs, got, got_grad, want, want_grad)
        assert (got <= exact + 1e-5).all(), (seed, got, exact)


def _bins_kernel():
    """A Triton kernel that writes ``kernels_triton._bin`` of each error (Triton resolves a kernel's names
    in its module's globals, so they are set there)."""
    import triton
    import triton.language as tl

    from lovasz.engine import kernels_triton

    globals().update(tl=tl, _triton_bin=kernels_triton._bin)

    @triton.jit
    def bins_kernel(e_ptr, inv_ptr, out_ptr, n, lo, per_octave, num_bins, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        e = tl.load(e_ptr + offs, mask=mask, other=0.0)
        inv = tl.load(inv_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, _triton_bin(e, inv, lo, per_octave, num_bins), mask=mask)  # noqa: F821

    return bins_kernel


def test_triton_bin_index_equals_binning_index():
    # The Triton kernels' bin of an error (_bin, from the float32 bits of e·(1/U)) against Binning.index,
    # the PyTorch engine's, for the same float32 errors and anchors: equal everywhere.
    import triton

    from test_agreement import _edge_and_random_errors

    bins_kernel = _bins_kernel()

    for bins in (256, lovasz.DEFAULT_BINS, 40_000):
        binning = Binning.for_bins(bins)
        for top in (1.0, 0.7, 3.3e-5, 7.5, 1e30):
            e = _edge_and_random_errors(top, binning.lo, 4_000, seed=bins)
            inv = inverse_top(e.max()).expand_as(e).contiguous()
            got = torch.empty(e.shape, dtype=torch.int32)
            block = 1024
            bins_kernel[(triton.cdiv(e.numel(), block),)](
                e, inv, got, e.numel(), binning.lo, binning.per_octave, binning.num_bins, BLOCK=block
            )
            want = binning.index(e.unsqueeze(0), inv[:1].view(1, 1)).squeeze(0)
            assert torch.equal(got.long(), want), (bins, top)
            assert want.min() == 0 and want.max() == binning.num_bins - 1


def test_triton_head_weights_equal_head_weights():
    # The exact head's weights that the Triton path uses come from histogram.head_weights (fused, in
    # PyTorch): the same function as the PyTorch engine's, so the two agree on the head bit for bit
    # whenever they agree on the head's elements.  Checked on a call whose groups are all head.
    from lovasz import surrogates
    from lovasz.engine import fused
    from lovasz.engine.histogram import HEAD, head_weights

    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (2, 3, 20), generator=g).float()  # ties, and groups smaller than the head
    t = torch.randint(0, 2, (2, 20), generator=g)  # class 2 absent
    binning = Binning.for_bins(lovasz.DEFAULT_BINS)
    none = t.new_empty(0)  # no ragged batch
    out = fused._forward(x, t, none, BACKEND, surrogates.SOFTMAX.code, True, None, binning.lo, binning.per_octave)
    assert (out.head_values >= 0).sum(dim=1).tolist() == [20] * 6 and out.head_values.shape[1] == HEAD
    want = head_weights(out.head_values, out.head_fg, out.head_values >= 0, out.n_fg)
    assert torch.equal(out.head_weights, want.to(torch.float32))


def test_triton_fidelity_in_a_crowded_top_bin():
    # tests/test_fidelity.py's crowded top bin (a missed small object next to confident false positives)
    # with the Triton kernels: the same bar against float64 as the CPU backends.
    from test_fidelity import check_crowded_top_bin

    for margin in (10, 12, 14, 20):
        for from_logits in (True, False):
            check_crowded_top_bin(BACKEND, margin, from_logits)


def test_triton_ragged_batches_match_pytorch_binned_engine():
    # batch= (point clouds): the Triton kernels group each point by its sample, against the PyTorch engine,
    # with a missing, a one-point and a fully ignored sample and shuffled ids (tests/test_ragged.py's).
    from test_ragged import _call, _points

    for kind in ("softmax", "hinge", "sigmoid", "multilabel"):
        x, t, batch = _points(kind, seed=5, dtype=torch.float32)
        loss_kind = "sigmoid" if kind == "multilabel" else kind
        results = []
        for backend in ("torch", BACKEND):
            xg = x.clone().requires_grad_(True)
            loss = _call(loss_kind, xg, t, per_image=True, batch=batch, bins=256, backend=backend, reduction="none")
            (loss * torch.arange(1.0, loss.numel() + 1)).sum().backward()
            results.append((loss.detach(), xg.grad))
        (want, want_grad), (got, got_grad) = results
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=kind)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6, msg=kind)
