"""Fused binned Lovász losses: scores and labels in, per-group losses out, no error tensor in between.

A kernel module (:mod:`.kernels_cpu`, numba; :mod:`.kernels_triton`, Triton), named by the resolver
(:mod:`.backends`) and loaded through :func:`.backends.load_kernels`, provides two functions with one
contract:

* ``histogram(x32, t, surrogate, per_image, ignore_index, binning) -> Histogram``: surrogate → error →
  bin → per (group, bin) counts and error sums, for ``x32`` ``[B, C, N]`` float32 and ``t`` int64
  (``[B, N]`` class ids or ``[B, C, N]`` 0/1 labels, by the surrogate's layout);
* ``backward(x32, t, surrogate, per_image, ignore_index, binning, top, table, grad)``: recompute the errors
  and their bins (with the anchors ``top`` of the histogram), look the weight up in ``table``
  (``[G, K, 2]``, scaled by the upstream gradient) and write d loss / d ``x32`` into ``grad``.

:func:`.histogram.histogram_losses` turns the histogram into losses and the table, as for the PyTorch
binned engine, so both give ``Σ_i e_i w_i`` with the same weights.

Both directions are registered as PyTorch custom operators (``lovasz::binned_forward`` and
``lovasz::binned_backward``, :func:`torch.library.custom_op`) with fake (meta) implementations and an
autograd formula, so ``torch.compile`` keeps them as opaque calls inside a compiled graph instead of
falling back to the slower PyTorch engine.  Eager calls go through an equivalent autograd function with
the same two implementations.  Neither has a second derivative: double backward through the fused path
raises an error that says so (use ``backend="torch"`` for double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import surrogates
from .._checks import compiling
from ..surrogates import Surrogate
from . import backends
from .histogram import Binning, Histogram, histogram_losses

__all__ = ["fused_binned"]


def _kernel_args(code: int, lo: int, per_octave: int) -> tuple[Surrogate, Binning]:
    return surrogates.from_code(code), Binning(lo, per_octave)


def _groups(x32: Tensor, per_image: bool) -> int:
    b, c = x32.shape[:2]
    return b * c if per_image else c


def _saves_errors(kernels, code: int) -> bool:
    """Whether the kernel module keeps the errors for backward (then the scores are not saved)."""
    return bool(getattr(kernels, "saves_errors", lambda s: False)(surrogates.from_code(code)))


def _forward(
    x32: Tensor,
    t: Tensor,
    backend: str,
    code: int,
    per_image: bool,
    ignore_index: int | None,
    lo: int,
    per_octave: int,
    sync=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Losses ``[G]`` float32, weight table ``[G, K, 2]`` float32, anchors ``[G]`` float32, foreground and
    valid counts ``[G]``, and the errors kept for backward (empty unless the kernels keep them); with
    ``sync``, of all ranks' inputs together."""
    kernels = backends.load_kernels(backend)
    surrogate, binning = _kernel_args(code, lo, per_octave)
    saves = _saves_errors(kernels, code)
    kept = torch.empty_like(x32) if saves else x32.new_empty(0)
    extra: dict = {"errors": kept} if saves else {}
    if sync is not None:
        extra["reduce_top"] = sync.all_max
    hist = kernels.histogram(x32, t, surrogate, per_image, ignore_index, binning, **extra)
    if sync is not None:
        hist = Histogram(sync.sum_histogram(hist.merged().cells.to(x32.device)), hist.top, binning)
    losses, table, n_fg, n_valid = histogram_losses(hist, use_numba=backend == "numba")
    device = x32.device
    return (
        losses.to(device, torch.float32),
        table.to(device),
        hist.top.to(device, torch.float32),
        n_fg.to(device),
        n_valid.to(device),
        kept,
    )


def _forward_impl(
    x32: Tensor,
    t: Tensor,
    backend: str,
    code: int,
    per_image: bool,
    ignore_index: int | None,
    lo: int,
    per_octave: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(x32, t, backend, code, per_image, ignore_index, lo, per_octave)


_binned_forward = torch.library.custom_op("lovasz::binned_forward", _forward_impl, mutates_args=())


@_binned_forward.register_fake
def _(x32, t, backend, code, per_image, ignore_index, lo, per_octave):
    g = _groups(x32, per_image)
    k = Binning(lo, per_octave).num_bins
    counts = x32.new_empty(g, dtype=torch.int64)
    kept = torch.empty_like(x32) if _saves_errors(backends.load_kernels(backend), code) else x32.new_empty(0)
    return x32.new_empty(g), x32.new_empty(g, k, 2), x32.new_empty(g), counts, torch.empty_like(counts), kept


def _backward_impl(
    source: Tensor,
    t: Tensor,
    top: Tensor,
    table: Tensor,
    backend: str,
    code: int,
    per_image: bool,
    ignore_index: int | None,
    lo: int,
    per_octave: int,
) -> Tensor:
    """d loss / d scores for a weight table already scaled by the upstream gradient.  ``source`` is what
    forward saved: the errors the kernels kept (then ``t`` is empty and unused), or the scores ``x32``."""
    kernels = backends.load_kernels(backend)
    surrogate, binning = _kernel_args(code, lo, per_octave)
    grad = torch.empty_like(source)
    if _saves_errors(kernels, code):
        kernels.backward(None, None, surrogate, per_image, ignore_index, binning, top, table.contiguous(), grad,
                         errors=source)  # fmt: skip
    else:
        kernels.backward(source, t, surrogate, per_image, ignore_index, binning, top, table.contiguous(), grad)
    return grad


_binned_backward = torch.library.custom_op("lovasz::binned_backward", _backward_impl, mutates_args=())


@_binned_backward.register_fake
def _(source, t, top, table, backend, code, per_image, ignore_index, lo, per_octave):
    return torch.empty_like(source)


def _setup_context(ctx, inputs, output) -> None:
    x32, t, *config = inputs
    if output[5].dim() > 1:  # the kernels kept the errors: they replace the scores and the labels
        ctx.save_for_backward(output[5], t.new_empty(0), output[1], output[2])
    else:
        ctx.save_for_backward(x32, t, output[1], output[2])
    ctx.config = config
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_losses, *_):
    source, t, table, top = ctx.saved_tensors
    scaled = table * grad_losses.to(torch.float32).view(-1, 1, 1)
    grad = torch.ops.lovasz.binned_backward(source, t, top, scaled, *ctx.config)
    return (grad,) + (None,) * (1 + len(ctx.config))


torch.library.register_autograd("lovasz::binned_forward", _backward, setup_context=_setup_context)


class _EagerFused(torch.autograd.Function):
    """The same computation outside ``torch.compile``: calling a custom operator eagerly imports
    ``torch._dynamo`` on its first call (over a second), which a plain autograd function avoids."""

    @staticmethod
    def forward(ctx, x32, t, sync, *config):  # type: ignore[override]
        output = _forward(x32, t, *config, sync=sync)
        _setup_context(ctx, (x32, t, *config), output)
        ctx.set_materialize_grads(False)  # no zero gradients for the outputs that have none (the kept errors)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses, *_):  # type: ignore[override]
        if grad_losses is None:
            return (None,) * (3 + len(ctx.config))
        source, t, table, top = ctx.saved_tensors
        scaled = table * grad_losses.to(torch.float32).view(-1, 1, 1)
        return (_backward_impl(source, t, top, scaled, *ctx.config),) + (None,) * (2 + len(ctx.config))


def fused_binned(
    x: Tensor,
    target: Tensor,
    *,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    binning: Binning,
    backend: str,
    sync=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group binned Lovász losses straight from scores.

    Args:
        x: ``[B, C, N]`` scores (any float dtype; the kernels compute in float32, the gradient comes back
            in ``x``'s dtype).
        target: ``[B, N]`` class ids (``"classes"`` layout) or ``[B, C, N]`` 0/1 labels (``"channels"``).
        surrogate: from :mod:`lovasz.surrogates`.
        backend: ``"numba"`` or ``"triton"``, as chosen by :func:`.backends.resolve`.
        sync: a :class:`lovasz.distributed.ProcessSync` for the loss of all ranks' inputs together.

    Returns:
        ``(losses, fg_count, valid_count)``, each ``[G]`` with ``G = B·C`` per image or ``C``.
    """
    x32 = x.to(torch.float32).contiguous()
    t = target.to(torch.int64).contiguous()
    config = (backend, surrogate.code, per_image, ignore_index, binning.lo, binning.per_octave)
    if compiling() and sync is None:
        losses, _, _, n_fg, n_valid, _ = torch.ops.lovasz.binned_forward(x32, t, *config)
    else:
        losses, _, _, n_fg, n_valid, _ = _EagerFused.apply(x32, t, sync, *config)
    return losses, n_fg, n_valid
