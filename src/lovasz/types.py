"""Type aliases of the public API, defined once and used by the functions, the modules and the checks.

Each alias is a :data:`typing.Literal`; ``typing.get_args`` gives its allowed values, which is how
:mod:`lovasz._checks` validates arguments, so a new value is added in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias, get_args

__all__ = ["BACKENDS", "REDUCTIONS", "BackendName", "Bins", "ClassSelection", "Reduction"]

Reduction: TypeAlias = Literal["mean", "sum", "none"]
"""``"mean"``, ``"sum"`` or ``"none"``, as in ``torch.nn.functional``."""

BackendName: TypeAlias = Literal["auto", "torch", "native", "triton"]
"""Which implementation evaluates the binned engine (see :mod:`lovasz.engine.backends`)."""

Bins: TypeAlias = int | Literal["auto"] | None
"""The engine: ``"auto"`` (binned where it is faster, exact for float64 and small groups), ``None`` (exact)
or an int (binned, with that many bins); see :func:`lovasz.engine.backends.auto_bins`."""

ClassSelection: TypeAlias = Literal["present", "all"] | Sequence[int]
"""Classes averaged by :func:`lovasz.lovasz_softmax`: ``"present"``, ``"all"`` or a sequence of ids."""

REDUCTIONS: tuple[str, ...] = get_args(Reduction)
BACKENDS: tuple[str, ...] = get_args(BackendName)
CLASS_KEYWORDS: tuple[str, ...] = get_args(get_args(ClassSelection)[0])
