"""Fused binned Lovász losses: scores and labels in, per-group losses out, no error tensor in between.

A kernel module (:mod:`.kernels_cpu`, numba; :mod:`.kernels_triton`, Triton), named by the resolver
(:mod:`.backends`) and loaded through :func:`.backends.load_kernels`, provides three functions with one
contract, for ``x32`` ``[B, C, N]`` float32 and ``t`` int64 (``[B, N]`` class ids or ``[B, C, N]`` 0/1
labels, by the surrogate's layout):

* ``histogram(x32, t, surrogate, per_image, ignore_index, binning, reduce_top=None) -> Histogram``:
  surrogate → error → bin → per (group, bin) counts and error sums;
* ``head(x32, t, surrogate, per_image, ignore_index, binning, top, cut, capacity)``: the errors,
  foreground flags and bins of the elements of each group's exact head (bins from ``cut[g]`` up,
  :func:`.histogram.head_cut`), and how many there are;
* ``backward(x32, t, surrogate, per_image, ignore_index, binning, top, table, grad, head)``: recompute the
  errors and their bins (with the anchors ``top`` of the histogram), take the weight from ``table``
  (``[G, K, 2]``) or, for an element of the head, from ``head`` = ``(cut, values, fg, weights)``, all
  scaled by the upstream gradient, and write d loss / d ``x32`` into ``grad``.

A module with ``KEEPS_ERRORS`` (numba) takes a buffer ``errors=`` shaped like ``x32``: ``histogram`` writes
the errors there and ``head`` reads them; if ``saves_errors(surrogate)``, backward reads them too instead of
the scores, which are then not saved.

:func:`.histogram.histogram_losses` turns the histogram into losses and the table, and
:func:`.histogram.head_weights` gives the head's exact weights, as for the PyTorch binned engine, so both
give ``Σ_i e_i w_i`` with the same weights.

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
from .histogram import HEAD, Binning, Histogram, head_cut, head_weights, histogram_losses

__all__ = ["fused_binned"]


def _kernel_args(code: int, lo: int, per_octave: int) -> tuple[Surrogate, Binning]:
    return surrogates.from_code(code), Binning(lo, per_octave)


def _groups(x32: Tensor, per_image: bool) -> int:
    b, c = x32.shape[:2]
    return b * c if per_image else c


def _saves_errors(kernels, code: int) -> bool:
    """Whether the kernel module's backward reads the kept errors (then the scores are not saved)."""
    return bool(getattr(kernels, "saves_errors", lambda s: False)(surrogates.from_code(code)))


def _mark_unused(values: Tensor, counts: Tensor) -> Tensor:
    """Head entries ``[G, HEAD]`` with -1 past each group's ``counts`` (errors are >= 0)."""
    return torch.where(torch.arange(values.shape[1], device=values.device) < counts.unsqueeze(1), values, -1.0)


def _forward(
    x32: Tensor,
    t: Tensor,
    backend: str,
    code: int,
    per_image: bool,
    ignore_index: int | None,
    lo: int,
    per_octave: int,
    present_only: bool = False,
    sync=None,
) -> tuple[Tensor, ...]:
    """Losses ``[G]`` float32, weight table ``[G, K, 2]`` float32 (in the kernels' own layout where they have
    one: ``kernels.table_arg``), anchors ``[G]`` float32, foreground and
    valid counts ``[G]``, the errors kept for backward (empty unless the kernels keep them), and the exact
    head: ``cut`` ``[G]`` int64, ``values`` ``[G, H]`` float32 (-1 where unused), ``fg`` ``[G, H]`` bool,
    ``weights`` ``[G, H]`` float32.  With ``sync``, of all ranks' inputs together (the head of every rank,
    ``H = world_size · HEAD``).  ``present_only``: only the losses of groups with a foreground label are
    needed (``classes="present"``); kernels with ``SKIPS_ABSENT`` then leave the others out (loss 0, no
    gradient), the rest compute them anyway."""
    kernels = backends.load_kernels(backend)
    surrogate, binning = _kernel_args(code, lo, per_octave)
    buffer = torch.empty_like(x32) if getattr(kernels, "KEEPS_ERRORS", False) else None
    extra: dict = {} if buffer is None else {"errors": buffer}
    weighted: list[Tensor] = []  # the head's weights, where the kernels compute them
    if sync is None and hasattr(kernels, "losses"):  # the kernels' own road for a local loss
        if present_only and getattr(kernels, "SKIPS_ABSENT", False):
            extra["present_only"] = True
        top, losses, table, n_fg, n_valid, cut, values, fg, counts, *weighted = kernels.losses(
            x32, t, surrogate, per_image, ignore_index, binning, HEAD, **extra
        )
        values = _mark_unused(values, counts)
    elif sync is None:
        hist = kernels.histogram(x32, t, surrogate, per_image, ignore_index, binning, **extra)
        losses, table, n_fg, n_valid, cut = histogram_losses(hist, kernels=kernels)
        top = hist.top
        values, fg, _, counts = kernels.head(
            x32, t, surrogate, per_image, ignore_index, binning, top, cut, HEAD, **extra
        )
        values = _mark_unused(values, counts)
    elif hasattr(kernels, "global_losses"):  # across processes, in the kernels' own two steps
        top, losses, table, n_fg, n_valid, cut, values, fg, weights_ = kernels.global_losses(
            x32, t, surrogate, per_image, ignore_index, binning, HEAD, sync=sync, **extra
        )
        weighted = [weights_]
    else:  # across processes: the local head's candidates travel with the histogram
        hist = kernels.histogram(x32, t, surrogate, per_image, ignore_index, binning, reduce_top=sync.all_max, **extra)
        local = hist.merged()
        top = hist.top
        values, fg, bins, counts = kernels.head(
            x32, t, surrogate, per_image, ignore_index, binning, top, head_cut(local), HEAD, **extra
        )
        values = _mark_unused(values, counts)
        cells, values, fg, bins = sync.sum_histogram(
            local.cells.to(x32.device), (values.to(x32.device), fg.to(x32.device), bins.to(x32.device))
        )
        losses, table, n_fg, n_valid, cut = histogram_losses(Histogram(cells, top, binning), kernels=kernels)
        keep = (values >= 0) & (bins >= cut.to(bins.device).unsqueeze(1))  # the global head's bins
        values, fg = torch.where(keep, values, -1.0), fg & keep
    device = x32.device
    values, fg, n_fg = values.to(device), fg.to(device), n_fg.to(device)
    if weighted:  # the kernels weighted the head themselves, and its loss is in `losses`
        weights, losses = weighted[0].to(device), losses.to(device)
    else:
        weights = head_weights(values, fg, values >= 0, n_fg)
        losses = losses.to(device) + (weights * values.clamp_min(0).to(torch.float64)).sum(dim=1)
    kept = buffer if buffer is not None and _saves_errors(kernels, code) else x32.new_empty(0)
    if hasattr(kernels, "table_arg"):  # the table in the kernels' own layout, which only they read
        table = kernels.table_arg(table)
    return (
        losses.to(torch.float32),
        table.to(device),
        top.to(device, torch.float32),
        n_fg,
        n_valid.to(device),
        kept,
        cut.to(device),
        values,
        fg,
        weights.to(torch.float32),
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
    present_only: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(x32, t, backend, code, per_image, ignore_index, lo, per_octave, present_only)


_binned_forward = torch.library.custom_op("lovasz::binned_forward", _forward_impl, mutates_args=())


@_binned_forward.register_fake
def _(x32, t, backend, code, per_image, ignore_index, lo, per_octave, present_only):
    g = _groups(x32, per_image)
    k = Binning(lo, per_octave).num_bins
    counts = x32.new_empty(g, dtype=torch.int64)
    kernels = backends.load_kernels(backend)
    keeps = getattr(kernels, "KEEPS_ERRORS", False) and _saves_errors(kernels, code)
    kept = torch.empty_like(x32) if keeps else x32.new_empty(0)
    head = (x32.new_empty(g, HEAD), x32.new_empty(g, HEAD, dtype=torch.bool), x32.new_empty(g, HEAD))
    table = kernels.empty_table(g, k, x32) if hasattr(kernels, "empty_table") else x32.new_empty(g, k, 2)
    return (x32.new_empty(g), table, x32.new_empty(g), counts, torch.empty_like(counts), kept,
            torch.empty_like(counts), *head)  # fmt: skip


def _backward_impl(
    source: Tensor,
    t: Tensor,
    top: Tensor,
    table: Tensor,
    scale: Tensor,
    cut: Tensor,
    head_values: Tensor,
    head_fg: Tensor,
    head_weights: Tensor,
    backend: str,
    code: int,
    per_image: bool,
    ignore_index: int | None,
    lo: int,
    per_octave: int,
    present_only: bool,
) -> Tensor:
    """d loss / d scores for the weight table scaled by ``scale`` (each group's upstream gradient: by the
    kernels as they read it where they can, ``SCALES_TABLE``, else here) and head weights already scaled.
    ``source`` is what forward saved: the errors the kernels kept (then ``t`` is empty and unused), or the
    scores ``x32``."""
    kernels = backends.load_kernels(backend)
    surrogate, binning = _kernel_args(code, lo, per_octave)
    grad = torch.empty_like(source)
    head = (cut, head_values.contiguous(), head_fg.contiguous(), head_weights.contiguous())
    extra: dict = {}
    if getattr(kernels, "SCALES_TABLE", False):
        extra["scale"] = scale
    else:
        table = table * scale.view(-1, 1, 1)
    # The table as forward left it: [G, K, 2], or the kernels' own layout where they have one (table_arg).
    table = table.contiguous()
    if t.dim() == 1:  # forward kept the errors and saved an empty target in its place (_setup_context)
        kernels.backward(None, None, surrogate, per_image, ignore_index, binning, top, table, grad, head,
                         errors=source, **extra)  # fmt: skip
    else:
        kernels.backward(source, t, surrogate, per_image, ignore_index, binning, top, table, grad, head,
                         **extra)  # fmt: skip
    return grad


_binned_backward = torch.library.custom_op("lovasz::binned_backward", _backward_impl, mutates_args=())


@_binned_backward.register_fake
def _(source, t, top, table, scale, cut, head_values, head_fg, head_weights, backend, code, per_image, ignore_index,
      lo, per_octave, present_only):  # fmt: skip
    return torch.empty_like(source)


def _setup_context(ctx, inputs, output) -> None:
    x32, t, *config = inputs
    table, top, head = output[1], output[2], output[6:]
    if output[5].dim() > 1:  # the kernels kept the errors: they replace the scores and the labels
        ctx.save_for_backward(output[5], t.new_empty(0), table, top, *head)
    else:
        ctx.save_for_backward(x32, t, table, top, *head)
    ctx.config = config
    ctx.mark_non_differentiable(*output[1:])


def _scaled(ctx, grad_losses: Tensor) -> tuple[Tensor, ...]:
    """The saved tensors with the upstream gradient of each group's loss: the head weights scaled by it,
    the table with it beside (scaled in backward, without a copy where the kernels can)."""
    source, t, table, top, cut, head_values, head_fg, head_weights = ctx.saved_tensors
    scale = grad_losses.to(torch.float32).contiguous()
    return (source, t, top, table, scale, cut, head_values, head_fg, head_weights * scale.view(-1, 1))


def _backward(ctx, grad_losses, *_):
    grad = torch.ops.lovasz.binned_backward(*_scaled(ctx, grad_losses), *ctx.config)
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
        return (_backward_impl(*_scaled(ctx, grad_losses), *ctx.config),) + (None,) * (2 + len(ctx.config))


def fused_binned(
    x: Tensor,
    target: Tensor,
    *,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    binning: Binning,
    backend: str,
    present_only: bool = False,
    sync=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group binned Lovász losses straight from scores.

    Args:
        x: ``[B, C, N]`` scores (any float dtype; the kernels compute in float32, the gradient comes back
            in ``x``'s dtype).
        target: ``[B, N]`` class ids (``"classes"`` layout) or ``[B, C, N]`` 0/1 labels (``"channels"``).
        surrogate: from :mod:`lovasz.surrogates`.
        backend: ``"numba"`` or ``"triton"``, as chosen by :func:`.backends.resolve`.
        present_only: only the losses of groups with a foreground label are needed (``classes="present"``):
            kernels that can leave the others out do (their losses 0, their gradient 0).
        sync: a :class:`lovasz.distributed.ProcessSync` for the loss of all ranks' inputs together (then
            ``present_only`` is ignored: a class is present where any rank has it).

    Returns:
        ``(losses, fg_count, valid_count)``, each ``[G]`` with ``G = B·C`` per image or ``C``.
    """
    x32 = x.to(torch.float32).contiguous()
    t = target.to(torch.int64).contiguous()
    present_only = present_only and sync is None
    config = (backend, surrogate.code, per_image, ignore_index, binning.lo, binning.per_octave, present_only)
    if compiling() and sync is None:
        losses, _, _, n_fg, n_valid, *_ = torch.ops.lovasz.binned_forward(x32, t, *config)
    else:
        losses, _, _, n_fg, n_valid, *_ = _EagerFused.apply(x32, t, sync, *config)
    return losses, n_fg, n_valid
