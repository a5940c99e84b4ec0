"""The one return type of every engine path."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["GroupLosses"]


@dataclass(frozen=True)
class GroupLosses:
    """Lovász losses of all groups, folded to ``[B, C]`` (per image) or ``[C]`` (whole batch), with the
    pixel counts that the reduction needs.

    Every engine path (exact; binned in PyTorch, numba or Triton) returns one of these, so the reduction
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
