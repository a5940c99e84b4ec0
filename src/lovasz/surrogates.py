"""The catalogue of surrogates: how scores and labels become the pixel errors that the Lovász engine sorts.

A surrogate is named once here, with the properties that every other part of the package reads from
it instead of spelling them again:

* ``layout``: ``"classes"`` — input ``[B, C, N]`` scores over ``C`` classes and target ``[B, N]`` class
  ids, one Lovász group per class (Lovász-Softmax); ``"channels"`` — input and target ``[B, C, N]``, each
  channel an independent binary problem with 0/1 labels (Lovász hinge, Lovász-Sigmoid).
* ``from_logits``: whether the input holds raw scores (a softmax/sigmoid is taken inside) or
  probabilities.
* ``bounded``: whether every error lies in ``[0, 1]``; the binned engine picks its bin range from it.
* ``code``: the integer that identifies the surrogate inside the C and Triton kernels.

======================  ==========  ===========  =======  ====  =========================================
name                    layout      from_logits  bounded  code  error of pixel ``i`` in group ``c``
======================  ==========  ===========  =======  ====  =========================================
``"softmax"``           classes     yes          yes      0     ``|1[y_i = c] − softmax(x_i)_c|``
``"probs"``             classes     no           yes      1     ``|1[y_i = c] − x_ic|``
``"sigmoid"``           channels    yes          yes      2     ``|y_ic − σ(x_ic)|``
``"sigmoid_probs"``     channels    no           yes      3     ``|y_ic − x_ic|``
``"hinge"``             channels    yes          no       4     ``max(1 − x_ic·(2 y_ic − 1), 0)``
======================  ==========  ===========  =======  ====  =========================================

The error builders (:mod:`lovasz.errors`), the backend resolver (:mod:`lovasz.engine.backends`) and both
kernel families (:mod:`lovasz.engine.kernels_native`, :mod:`lovasz.engine.kernels_triton`) take a
:class:`Surrogate` or its ``code``; a new surrogate is added here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HINGE", "PROBS", "SIGMOID", "SIGMOID_PROBS", "SOFTMAX", "SURROGATES", "Surrogate", "for_loss", "from_code", "get",
]  # fmt: skip


@dataclass(frozen=True)
class Surrogate:
    """One way of turning scores and labels into Lovász errors (see the module's table)."""

    name: str
    code: int
    layout: Literal["classes", "channels"]
    from_logits: bool
    bounded: bool
    error: str

    @property
    def per_class(self) -> bool:
        """``True`` for the ``"classes"`` layout (class-id targets), ``False`` for independent channels."""
        return self.layout == "classes"


SOFTMAX = Surrogate("softmax", 0, "classes", True, True, "|1[y = c] - softmax(x)_c|")
PROBS = Surrogate("probs", 1, "classes", False, True, "|1[y = c] - p_c|")
SIGMOID = Surrogate("sigmoid", 2, "channels", True, True, "|y - sigmoid(x)|")
SIGMOID_PROBS = Surrogate("sigmoid_probs", 3, "channels", False, True, "|y - p|")
HINGE = Surrogate("hinge", 4, "channels", True, False, "max(1 - x·(2y - 1), 0)")

SURROGATES: dict[str, Surrogate] = {s.name: s for s in (SOFTMAX, PROBS, SIGMOID, SIGMOID_PROBS, HINGE)}


def from_code(code: int) -> Surrogate:
    """The surrogate whose kernel code is ``code``."""
    for s in SURROGATES.values():
        if s.code == code:
            return s
    raise ValueError(f"no surrogate has code {code}")


def get(name: str | Surrogate) -> Surrogate:
    """The surrogate called ``name`` (a :class:`Surrogate` is returned as is)."""
    if isinstance(name, Surrogate):
        return name
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; known: {sorted(SURROGATES)}") from None


LOSSES: tuple[str, ...] = ("softmax", "hinge", "sigmoid")
"""The public losses, by the suffix of their function (``lovasz_softmax``, ...)."""


def for_loss(loss: str, from_logits: bool = True) -> Surrogate:
    """The surrogate of public loss ``loss`` (``"softmax"``, ``"hinge"`` or ``"sigmoid"``) for scores that
    are logits or, with ``from_logits=False``, probabilities (the hinge takes logits only)."""
    if loss == "softmax":
        return SOFTMAX if from_logits else PROBS
    if loss == "sigmoid":
        return SIGMOID if from_logits else SIGMOID_PROBS
    if loss == "hinge":
        if not from_logits:
            raise ValueError("the Lovász hinge takes logits (from_logits=True)")
        return HINGE
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
