"""The return types of the engine paths and of the kernel modules' functions, by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

__all__ = ["GroupLosses", "HeadElements", "KernelLosses"]


@dataclass(frozen=True)
class GroupLosses:
    """Lovász losses of all groups, folded to ``[B, C]`` (per image) or ``[C]`` (whole batch), with the
    pixel counts that the reduction needs.

    Every engine path (exact; binned in PyTorch, C or Triton) returns one of these, so the reduction
    (:mod:`lovasz.reduce`) and anything between engine and reduction (e.g. a sync across processes) see
    one shape of data.
    """

    losses: Tensor  # float32/float64, differentiable w.r.t. the scores
    fg_count: Tensor  # int64: ground-truth pixels of the group's class among its valid pixels
    valid_count: Tensor  # int64: pixels of the group that are not ignored

    @property
    def present(self) -> Tensor:
        """Groups whose class occurs among their valid labels ('present' classes)."""
        return self.fg_count > 0

    @property
    def has_valid(self) -> Tensor:
        """Groups with at least one valid pixel."""
        return self.valid_count > 0

    def view(self, *shape: int) -> GroupLosses:
        return GroupLosses(self.losses.view(shape), self.fg_count.view(shape), self.valid_count.view(shape))


class HeadElements(NamedTuple):
    """The elements of each group's exact head, as a kernel module's ``head`` finds them."""

    values: Tensor  # [G, capacity] float32 errors (entries past `counts` unused)
    fg: Tensor  # [G, capacity] bool
    bins: Tensor  # [G, capacity] int64
    counts: Tensor  # [G] int64: how many entries of each row are used


class KernelLosses(NamedTuple):
    """What a kernel module's own loss road returns (``losses`` for a local loss, ``global_losses`` across
    processes): the losses with the exact head's part included, and what backward needs."""

    top: Tensor  # [G] float32 anchors (each group's largest error)
    losses: Tensor  # [G] float64, the head's part included
    table: Tensor  # [G, K, 2] float32 weight table (0 in the head)
    n_fg: Tensor  # [G] int64
    n_valid: Tensor  # [G] int64
    cut: Tensor  # [G] int64: the lowest bin of the exact head (-1: group left out)
    head_values: Tensor  # [G, H] float32, -1 where unused
    head_fg: Tensor  # [G, H] bool
    head_weights: Tensor  # [G, H] float32: the head elements' exact weights
