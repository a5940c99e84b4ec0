"""The Lovász engine: evaluates the Lovász extension of the Jaccard loss for many groups at once.

:func:`group_losses` is the road from scores to per-group losses: the resolver (:mod:`.backends`)
picks an implementation before the call, then either the errors are built (:mod:`lovasz.errors`) and
evaluated by the exact engine (:mod:`.exact`, one batched sort) or the PyTorch binned engine
(:mod:`.binned`), or fused kernels (:mod:`.fused`) build the binned histogram straight from the scores.
Every path returns a :class:`GroupLosses`.

:func:`lovasz_extension` evaluates ``[G, P]`` errors directly (``bins=None``: exact; an int: binned).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import surrogates
from ..errors import build_errors
from .backends import BackendNotSupportedError, Decision, LovaszFallbackWarning, resolve, triton_probe
from .binned import binned_scores, lovasz_binned, lovasz_binned_counts
from .exact import lovasz_exact, lovasz_exact_segments
from .histogram import DEFAULT_BINS, Binning, Histogram, histogram_losses, weight_tables
from .result import GroupLosses

__all__ = [
    "DEFAULT_BINS",
    "BackendNotSupportedError",
    "Binning",
    "Decision",
    "GroupLosses",
    "Histogram",
    "LovaszFallbackWarning",
    "group_losses",
    "histogram_losses",
    "lovasz_binned",
    "lovasz_exact",
    "lovasz_exact_segments",
    "lovasz_extension",
    "triton_probe",
    "weight_tables",
]


def lovasz_extension(errors: Tensor, fg: Tensor, valid: Tensor | None = None, bins: int | None = None) -> Tensor:
    """Lovász extension of the Jaccard loss of every row: ``[G, P]`` errors → ``[G]`` losses."""
    if bins is None:
        return lovasz_exact(errors, fg, valid)
    return lovasz_binned(errors, fg, valid, Binning.for_bins(bins))


def _in_sample_order(x: Tensor, target: Tensor, sample: Tensor, in_order: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The images of a ragged batch in sample order (each sample's images contiguous): as they are where
    ``sample`` is sorted (``in_order``: the order of torch_geometric and of sparse collate functions), else
    gathered by one stable sort (a copy, whose gradient autograd scatters back)."""
    if in_order:
        return x, target, sample
    order = torch.argsort(sample, stable=True)
    return x[order], target[order], sample[order]


def _by_sample(
    x: Tensor, target: Tensor, sample: Tensor, num_samples: int, in_order: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The images of a ragged batch in sample order (:func:`_in_sample_order`), for the fused kernels, and
    their ``[B + S + 1]`` int64 ragged argument: the sorted sample ids, then each sample's first image and
    one past its last."""
    x, target, sample = _in_sample_order(x, target, sample, in_order)
    counts = torch.bincount(sample, minlength=num_samples)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return x, target, torch.cat([sample, offsets])


# A ragged batch of at most this many samples is computed sample by sample, eagerly: each sample's images
# then form one set, and one-pixel images (flat points) one image of its points, which the kernels run at
# image speed, where the (sample, class) groups of one call are spread over images of one point
# (benchmarks/bench_pointcloud.py).
LOOP_SAMPLES = 64


def _sample_by_sample(
    s: surrogates.Surrogate, x: Tensor, target: Tensor, sample: Tensor, num_samples: int, in_order: bool, **kw
) -> GroupLosses:
    """:func:`group_losses` of a ragged batch per image, one sample at a time: each sample's loss is the
    batch loss of its images, folded to ``[S, C]``; a sample without images has losses 0 and no valid
    pixel.  ``kw``: the other arguments of :func:`group_losses`."""
    x, target, sample = _in_sample_order(x, target, sample, in_order)
    sizes = torch.bincount(sample, minlength=num_samples).tolist()
    c = x.shape[1]
    zeros = torch.zeros(c, dtype=torch.int64, device=x.device)
    losses, fg, valid = [], [], []
    for part, labels in zip(x.split(sizes), target.split(sizes), strict=True):
        if part.shape[0] == 0:
            losses.append(part.sum() * torch.zeros(c, dtype=part.dtype, device=part.device))
            fg.append(zeros)
            valid.append(zeros)
            continue
        r = group_losses(s, part, labels, per_image=False, **kw)
        losses.append(r.losses)
        fg.append(r.fg_count)
        valid.append(r.valid_count)
    return GroupLosses(torch.stack(losses), torch.stack(fg), torch.stack(valid))


def group_losses(
    surrogate: str | surrogates.Surrogate,
    x: Tensor,
    target: Tensor,
    *,
    per_image: bool,
    ignore_index: int | None,
    bins: int | None,
    backend: str = "auto",
    sync=None,
    present_only: bool = False,
    decision: Decision | None = None,
    sample: Tensor | None = None,
    num_samples: int = 0,
    samples_sorted: bool = False,
) -> GroupLosses:
    """Lovász losses of every group of ``x`` ``[B, C, N]``, folded to ``[B, C]`` (per image) or ``[C]``.

    ``target`` is ``[B, N]`` class ids for a surrogate with the ``"classes"`` layout, ``[B, C, N]`` 0/1
    labels for ``"channels"``.  Inputs are assumed checked (:mod:`lovasz._checks`).  With ``sync``
    (:class:`lovasz.distributed.ProcessSync`) and ``per_image=False``, the groups are those of all ranks'
    inputs together (per image, groups are local and need no synchronisation).

    ``present_only``: the caller uses only the groups whose class is present (a foreground label among
    their valid ones, ``classes="present"``); the native CPU kernels then leave the others out (their
    losses 0 and their gradient 0; the counts are exact), which per image skips most groups.  Other paths
    compute every group.  Ignored with ``sync`` over the batch, where presence is global.

    ``decision``: the resolver's decision for this call (:func:`.backends.resolve`), made by the caller
    once for its checks and this call; resolved here from ``backend`` when not given.

    ``sample``: with ``per_image``, the ``[B]`` int64 sample id of each image of a ragged batch (a flat
    point list is ``B = N`` images of one point, ``batch=`` of the losses): the groups are then the
    ``(sample, class)`` pairs, folded to ``[num_samples, C]``, and a sample id that no image has is a
    sample without valid pixels; ``samples_sorted``: whether ``sample`` is known to be non-decreasing (the
    fused kernels then use it as it is).  No padding.  Eagerly and with at most :data:`LOOP_SAMPLES`
    samples, each sample is the batch loss of its images (:func:`_sample_by_sample`); otherwise the exact
    engine sorts each class's row by sample id after its errors (:func:`.exact.lovasz_exact_segments`) and
    the binned engine counts each element in its sample's group (:mod:`.binned`).

    Over the batch (``per_image=False``), images of one pixel each (flat points, ``[N, C, 1]``) are
    evaluated as one image of ``N`` pixels (a ``[1, C, N]`` view): the same groups and elements, at image
    speed.
    """
    s = surrogates.get(surrogate)
    b, c = x.shape[:2]
    if not per_image:
        sample = None
    shape = (b, c) if sample is None else (num_samples, c)
    if not per_image:
        shape = (c,)
    if per_image:
        sync = None
        if b == 0 or shape[0] == 0:  # an empty local batch (only reachable with a process group)
            zeros = x.new_zeros(shape, dtype=torch.int64)
            return GroupLosses(x.sum() * x.new_zeros(shape, dtype=torch.float32), zeros, zeros)
        if sample is not None and 0 < num_samples <= LOOP_SAMPLES and not torch.compiler.is_compiling():
            return _sample_by_sample(
                s, x, target, sample, num_samples, samples_sorted, ignore_index=ignore_index, bins=bins,
                backend=backend, present_only=present_only, decision=decision,
            )  # fmt: skip
    elif b > 1 and x.shape[2] == 1:  # one-pixel images (flat points): one image of b pixels, a view
        x = x.permute(2, 1, 0)
        target = target.t() if target.dim() == 2 else target.permute(2, 1, 0)
    impl = decision if decision is not None else resolve(backend, x, bins, s)
    binning = None if bins is None else Binning.for_bins(bins)
    if impl.fused:
        from .fused import fused_binned  # registers the custom operators on first use

        assert binning is not None
        ragged = None
        if sample is not None:
            assert impl.backend.capabilities.ragged_groups, "the resolver gives ragged groups to capable backends"
            x, target, ragged = _by_sample(x, target, sample, num_samples, samples_sorted)
        result = fused_binned(
            x,
            target,
            surrogate=s,
            per_image=per_image,
            ignore_index=ignore_index,
            binning=binning,
            backend=impl.name,
            present_only=present_only,
            sync=sync,
            ragged=ragged,
        )
        return result.view(*shape)
    if binning is not None and sync is None:  # one autograd function from the scores (.binned)
        losses, n_fg, n_valid = binned_scores(
            s, x, target, per_image=per_image, ignore_index=ignore_index, binning=binning,
            sample=sample, num_samples=num_samples,
        )  # fmt: skip
        return GroupLosses(losses, n_fg, n_valid).view(*shape)
    if sample is not None:  # exact, ragged: each class's row over all points, segmented by sample
        groups = build_errors(s, x, target, per_image=False, ignore_index=ignore_index)
        n = x.shape[2]
        segment = sample if n == 1 else sample.repeat_interleave(n)
        losses, n_fg, n_valid = lovasz_exact_segments(groups.errors, groups.fg, groups.valid, segment, num_samples)
        return GroupLosses(losses.t(), n_fg.t(), n_valid.t())
    groups = build_errors(s, x, target, per_image=per_image, ignore_index=ignore_index)
    if binning is not None:  # over several processes: the error matrix and the histogram's all-reduce
        losses, n_fg, n_valid = lovasz_binned_counts(groups.errors, groups.fg, groups.valid, binning, sync)
        return GroupLosses(losses, n_fg, n_valid).view(*shape)
    errors, fg, valid = groups.errors, groups.fg, groups.valid
    if sync is not None:
        errors, fg, valid = sync.gather_columns(errors, fg, valid)
    losses = lovasz_exact(errors, fg, valid)
    n_fg = fg.sum(dim=1)
    n_valid = n_fg.new_full(n_fg.shape, errors.shape[1]) if valid is None else valid.sum(dim=1)
    return GroupLosses(losses, n_fg, n_valid).view(*shape)
