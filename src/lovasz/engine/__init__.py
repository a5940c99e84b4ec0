"""The Lovász engine: evaluates the Lovász extension of the Jaccard loss for many groups at once.

``lovasz_extension(errors, fg, valid, bins=None)`` takes ``[G, P]`` errors and returns ``[G]`` losses.
``bins=None`` selects the exact engine (:mod:`.exact`, one batched sort); an integer selects the binned
engine (:mod:`.binned`, histogram counts and a weight table, no sort).
"""

from __future__ import annotations

from torch import Tensor

from .binned import DEFAULT_BINS, Binning, lovasz_binned, weight_tables
from .exact import lovasz_exact

__all__ = [
    "DEFAULT_BINS",
    "Binning",
    "lovasz_binned",
    "lovasz_exact",
    "lovasz_extension",
    "weight_tables",
]


def lovasz_extension(
    errors: Tensor, fg: Tensor, valid: Tensor | None = None, bins: int | None = None, bounded: bool = True
) -> Tensor:
    """Lovász extension of the Jaccard loss of every row: ``[G, P]`` errors → ``[G]`` losses.

    ``bounded`` says the errors lie in ``[0, 1]`` (softmax/sigmoid); it picks the binned engine's range.
    """
    if bins is None:
        return lovasz_exact(errors, fg, valid)
    return lovasz_binned(errors, fg, valid, Binning.for_errors(bins, bounded))
