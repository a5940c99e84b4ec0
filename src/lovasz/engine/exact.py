"""Exact Lovász extension of the Jaccard loss, batched over groups with one sort.

For one group (one class of one image, or one class over the batch) with error vector ``e`` over ``p``
pixels and ground-truth set ``G`` (``n = |G|``), sort ``e`` decreasingly.  Let ``a`` and ``b`` be the numbers
of foreground and background pixels *before* an element in that order.  The increment of the Jaccard loss
``D(M) = |M| / |G ∪ M|`` when the element is added to the prefix set is

* foreground element: ``1 / (n + b)``,
* background element: ``(n - a) / ((n + b)(n + b + 1))`` (and ``1`` for the first background element of a
  group with ``n = 0``, ``0`` for the later ones),

and the extension is ``Σ_i e_i · w_i``.  The weights ``w`` are also its (sub)gradient.  Computing the
increments directly, instead of differencing Jaccard values, keeps them accurate in float32.

All groups are evaluated together: the errors form a ``[G, P]`` matrix; pixels that are not valid
(ignored, or padding) get the key ``-1`` so that they sort after every real error (errors are ``>= 0``)
and receive weight 0.  Only the weights, scattered back to the input order, are kept for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor


def jaccard_increments(fg_before: Tensor, bg_before: Tensor, n: Tensor, is_fg: Tensor) -> Tensor:
    """Increment of the Jaccard loss when an element joins a prefix with the given fg/bg counts.

    All arguments broadcast; counts are floating point.  Shared by the exact and the binned engines.
    """
    union = n + bg_before
    fg_w = 1.0 / union.clamp_min(1.0)
    bg_w = torch.where(
        n > 0,
        (n - fg_before) / (union * (union + 1.0)).clamp_min(1.0),
        (bg_before == 0).to(union.dtype),
    )
    return torch.where(is_fg, fg_w, bg_w)


class _LovaszExact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, errors: Tensor, fg: Tensor, valid: Tensor | None) -> Tensor:  # type: ignore[override]
        e = errors.detach()
        key = e if valid is None else torch.where(valid, e, torch.full((), -1.0, dtype=e.dtype, device=e.device))
        sorted_e, order = torch.sort(key, dim=1, descending=True, stable=True)
        del key
        fg_s = fg.gather(1, order)
        if valid is None:
            bg_s = ~fg_s
        else:
            bg_s = (sorted_e >= 0) & ~fg_s
        # Inclusive cumulative counts minus the element itself = counts strictly before it.
        a = torch.cumsum(fg_s, dim=1, dtype=torch.int32)
        b = torch.cumsum(bg_s, dim=1, dtype=torch.int32)
        n = a[:, -1:].to(e.dtype)
        a = (a - fg_s.to(torch.int32)).to(e.dtype)
        b = (b - bg_s.to(torch.int32)).to(e.dtype)
        w_sorted = jaccard_increments(a, b, n, fg_s)
        del a, b
        if valid is not None:
            w_sorted = w_sorted * (fg_s | bg_s)
        loss = (sorted_e.clamp_min(0) * w_sorted).sum(dim=1)
        weights = torch.empty_like(e).scatter_(1, order, w_sorted)
        ctx.save_for_backward(weights)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        return grad_loss.unsqueeze(1) * weights, None, None


def lovasz_exact(errors: Tensor, fg: Tensor, valid: Tensor | None = None) -> Tensor:
    """Exact Lovász extension of the Jaccard loss for every row of ``errors``.

    Args:
        errors: ``[G, P]`` non-negative errors, float32 or float64.
        fg: ``[G, P]`` bool, ground-truth membership of each pixel in its group's class (``False`` where
            not valid).
        valid: ``[G, P]`` bool or ``None`` (all valid).

    Returns:
        ``[G]`` losses, differentiable with respect to ``errors``.
    """
    return _LovaszExact.apply(errors, fg, valid)
