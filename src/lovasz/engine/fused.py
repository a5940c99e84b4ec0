"""Fused binned Lovász losses: logits and labels in, per-group losses out, no error tensor in between.

The kernels (CPU: :mod:`.kernels_cpu`, numba; CUDA: :mod:`.kernels_triton`) produce per (group, bin)
foreground/background counts and error sums.  The weight tables (:func:`.binned.weight_tables`) turn
them into losses, ``L_g = Σ_k w_fg[g,k]·S_fg[g,k] + w_bg[g,k]·S_bg[g,k]``, which equals ``Σ_i e_i w_i`` of
the pure PyTorch binned engine.  Backward recomputes errors and bins and looks the weights up.

Which implementation runs is chosen by :func:`backend`; ``LOVASZ_BACKEND`` (``auto``, ``torch``, ``numba``,
``triton``) overrides the choice, e.g. to test a kernel on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor

from .._checks import _compiling
from . import kernels_cpu
from .binned import Binning, weight_tables

BACKENDS = ("auto", "torch", "numba", "triton")
_TRITON_FAILED: list[str] = []  # set once an auto-selected Triton launch failed in this process


def _triton_available() -> bool:
    try:
        from . import kernels_triton
    except ImportError:
        return False
    return kernels_triton.AVAILABLE


def backend(x: Tensor) -> str:
    """The binned implementation used for input ``x``: ``"numba"``, ``"triton"`` or ``"torch"``."""
    choice = os.environ.get("LOVASZ_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"LOVASZ_BACKEND must be one of {BACKENDS}, got {choice!r}")
    if x.dtype == torch.float64 or _compiling():
        return "torch"  # float64 (gradcheck) and torch.compile use the traceable PyTorch engine
    if choice != "auto":
        return choice
    if x.device.type == "cpu" and kernels_cpu.AVAILABLE:
        return "numba"
    if x.device.type == "cuda" and _triton_available() and not _TRITON_FAILED:
        return "triton"
    return "torch"


def disable_triton(exc: BaseException) -> None:
    """After an auto-selected Triton kernel failed: warn once and use the PyTorch engine from now on."""
    _TRITON_FAILED.append(repr(exc))
    warnings.warn(
        f"lovasz: the Triton kernels failed ({exc!r}); using the PyTorch binned engine instead. "
        "Set LOVASZ_BACKEND=triton to make this an error, or LOVASZ_BACKEND=torch to silence it.",
        RuntimeWarning,
        stacklevel=3,
    )


def _tables_and_losses(acc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Partial accumulators ``[S, G, K, 2 (bg, fg), 2 (count, error sum)]`` → losses ``[G]``, weight table
    ``[G, K, 2]``, foreground and valid counts ``[G]``."""
    acc = acc.to(torch.float64).sum(dim=0)
    counts, sums = acc[..., 0].round().to(torch.int64), acc[..., 1]
    w_fg, w_bg = weight_tables(counts[..., 1], counts[..., 0])
    losses = (w_fg * sums[..., 1] + w_bg * sums[..., 0]).sum(dim=1)
    table = torch.stack([w_bg, w_fg], dim=-1).to(torch.float32)
    return losses, table, counts[..., 1].sum(dim=1), counts.sum(dim=(1, 2))


class _FusedBinned(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mode, per_image, ignore_index, binning, impl):  # type: ignore[override]
        x32 = x.detach().to(torch.float32).contiguous()
        t = target.to(torch.int64).contiguous()
        use_ignore = ignore_index is not None
        ignore = int(ignore_index) if use_ignore else 0
        b = binning
        if impl == "numba":
            forward_kernel, _, args = _numba_kernels(x32, t, ignore, use_ignore, mode, per_image, b)
            acc = forward_kernel(*args, kernels_cpu.NUM_CHUNKS)
            losses, table, n_fg, n_valid = (torch.from_numpy(a) for a in kernels_cpu.tables(acc))
        else:
            from . import kernels_triton

            acc = kernels_triton.forward(x32, t, ignore, use_ignore, mode, per_image, b)
            losses, table, n_fg, n_valid = _tables_and_losses(acc)
        ctx.save_for_backward(x32, t, table)
        ctx.config = (mode, per_image, ignore, use_ignore, binning, impl, x.dtype)
        ctx.mark_non_differentiable(n_fg, n_valid)
        return losses.to(torch.float32), n_fg, n_valid

    @staticmethod
    def backward(ctx, grad_losses, _n_fg, _n_valid):  # type: ignore[override]
        x32, t, table = ctx.saved_tensors
        mode, per_image, ignore, use_ignore, b, impl, dtype = ctx.config
        scaled = (table * grad_losses.to(torch.float32).view(-1, 1, 1)).contiguous()
        grad = torch.empty_like(x32)
        if impl == "numba":
            _, backward_kernel, args = _numba_kernels(x32, t, ignore, use_ignore, mode, per_image, b)
            backward_kernel(*args, scaled.numpy(), grad.numpy())
        else:
            from . import kernels_triton

            kernels_triton.backward(x32, t, ignore, use_ignore, mode, per_image, b, scaled, grad)
        return grad.to(dtype), None, None, None, None, None, None


def _numba_kernels(x32, t, ignore, use_ignore, mode, per_image, b):
    """(forward kernel, backward kernel, their shared leading arguments) for ``mode``."""
    softmax = mode in ("softmax", "probs")
    flag = mode == "softmax" if softmax else _BINARY_MODES[mode]
    args = (x32.numpy(), t.numpy(), ignore, use_ignore, flag, per_image, b.lo, b.hi, b.per_octave, b.num_bins)
    if softmax:
        return kernels_cpu.softmax_forward, kernels_cpu.softmax_backward, args
    return kernels_cpu.binary_forward, kernels_cpu.binary_backward, args


_BINARY_MODES = {
    "sigmoid": kernels_cpu.MODE_SIGMOID,
    "sigmoid_probs": kernels_cpu.MODE_SIGMOID_PROBS,
    "hinge": kernels_cpu.MODE_HINGE,
}


def fused_binned(
    x: Tensor, target: Tensor, *, mode: str, per_image: bool, ignore_index: int | None, binning: Binning, impl: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group binned Lovász losses straight from scores.

    Args:
        x: ``[B, C, N]`` scores.  ``mode``: ``"softmax"`` (logits), ``"probs"`` (probabilities; softmax
            layout), ``"sigmoid"``, ``"sigmoid_probs"`` or ``"hinge"`` (binary layouts).
        target: ``[B, N]`` class ids (softmax modes) or ``[B, C, N]`` 0/1 labels (binary modes).

    Returns:
        ``(losses, fg_count, valid_count)``, each ``[G]`` with ``G = B·C`` per image or ``C``.
    """
    return _FusedBinned.apply(x, target, mode, per_image, ignore_index, binning, impl)
