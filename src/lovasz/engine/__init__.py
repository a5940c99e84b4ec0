"""The Lovász engine: evaluates the Lovász extension of the Jaccard loss for many groups at once.

``lovasz_extension(errors, fg, valid, bins=None)`` takes ``[G, P]`` errors and returns ``[G]`` losses.
``bins=None`` selects the exact engine (one batched sort); an integer selects the binned engine.
"""

from __future__ import annotations

from torch import Tensor

from .exact import jaccard_increments, lovasz_exact

__all__ = ["jaccard_increments", "lovasz_exact", "lovasz_extension"]


def lovasz_extension(errors: Tensor, fg: Tensor, valid: Tensor | None = None, bins: int | None = None) -> Tensor:
    if bins is None:
        return lovasz_exact(errors, fg, valid)
    raise NotImplementedError("the binned engine (bins=<int>) is not available yet; use bins=None")
