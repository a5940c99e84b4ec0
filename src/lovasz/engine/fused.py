"""Fused binned Lovász losses: scores and labels in, per-group losses out, no error tensor in between.

A kernel module (:mod:`.kernels_cpu`, numba; :mod:`.kernels_triton`, Triton), chosen by
:mod:`.backends`, provides two functions with one contract:

* ``histogram(x32, t, surrogate, per_image, ignore_index, binning) -> Histogram``: surrogate → error →
  bin → per (group, bin) counts and error sums, for ``x32`` ``[B, C, N]`` float32 and ``t`` int64
  (``[B, N]`` class ids or ``[B, C, N]`` 0/1 labels, by the surrogate's layout);
* ``backward(x32, t, surrogate, per_image, ignore_index, binning, table, grad)``: recompute the errors and
  bins, look the weight up in ``table`` (``[G, K, 2]``, scaled by the upstream gradient) and write
  d loss / d ``x32`` into ``grad``.

:func:`.histogram.histogram_losses` turns the histogram into losses and the table, as for the PyTorch
binned engine, so both give ``Σ_i e_i w_i`` with the same weights.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..surrogates import Surrogate
from .histogram import Binning, histogram_losses

__all__ = ["fused_binned"]


class _FusedBinned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, surrogate, per_image, ignore_index, binning, kernels):  # type: ignore[override]
        x32 = x.detach().to(torch.float32).contiguous()
        t = target.to(torch.int64).contiguous()
        hist = kernels.histogram(x32, t, surrogate, per_image, ignore_index, binning)
        losses, table, n_fg, n_valid = histogram_losses(hist, use_numba=getattr(kernels, "NAME", "") == "numba")
        ctx.save_for_backward(x32, t, table)
        ctx.config = (surrogate, per_image, ignore_index, binning, kernels, x.dtype)
        ctx.mark_non_differentiable(n_fg, n_valid)
        return losses.to(torch.float32), n_fg, n_valid

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses, _n_fg, _n_valid):  # type: ignore[override]
        x32, t, table = ctx.saved_tensors
        surrogate, per_image, ignore_index, binning, kernels, dtype = ctx.config
        scaled = (table * grad_losses.to(torch.float32).view(-1, 1, 1)).contiguous()
        grad = torch.empty_like(x32)
        kernels.backward(x32, t, surrogate, per_image, ignore_index, binning, scaled, grad)
        return grad.to(dtype), None, None, None, None, None, None


def fused_binned(
    x: Tensor,
    target: Tensor,
    *,
    surrogate: Surrogate,
    per_image: bool,
    ignore_index: int | None,
    binning: Binning,
    kernels: ModuleType,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group binned Lovász losses straight from scores.

    Args:
        x: ``[B, C, N]`` scores.
        target: ``[B, N]`` class ids (``"classes"`` layout) or ``[B, C, N]`` 0/1 labels (``"channels"``).
        surrogate: from :mod:`lovasz.surrogates`.
        kernels: the kernel module chosen by :func:`.backends.resolve`.

    Returns:
        ``(losses, fg_count, valid_count)``, each ``[G]`` with ``G = B·C`` per image or ``C``.
    """
    return _FusedBinned.apply(x, target, surrogate, per_image, ignore_index, binning, kernels)
