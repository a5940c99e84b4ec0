"""``nn.Module`` wrappers around :mod:`lovasz.functional`, for use as ``criterion(input, target)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _checks
from .functional import lovasz_hinge, lovasz_sigmoid, lovasz_softmax
from .types import BackendName, ClassSelection, Reduction

__all__ = ["CrossEntropyLovaszLoss", "LovaszHingeLoss", "LovaszSigmoidLoss", "LovaszSoftmaxLoss"]


class LovaszSoftmaxLoss(nn.Module):
    """Module form of :func:`lovasz.lovasz_softmax`; the arguments are the same keyword arguments.

    ``weight`` is registered as a buffer, so it follows ``.to(device)`` and is saved in ``state_dict``.

    Example:
        >>> import torch, lovasz
        >>> criterion = lovasz.LovaszSoftmaxLoss(ignore_index=255)
        >>> loss = criterion(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8)))
    """

    weight: Tensor | None

    def __init__(
        self,
        *,
        classes: ClassSelection = "present",
        per_image: bool = False,
        ignore_index: int | None = None,
        weight: Tensor | Sequence[float] | None = None,
        from_logits: bool = True,
        bins: int | None = None,
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _checks.check_options(ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend)
        self.classes = classes if isinstance(classes, str) else tuple(int(c) for c in classes)
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.bins = bins
        self.reduction = reduction
        self.backend = backend
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_softmax(
            input,
            target,
            classes=self.classes,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            weight=self.weight,
            from_logits=self.from_logits,
            bins=self.bins,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"classes={self.classes!r}, per_image={self.per_image}, ignore_index={self.ignore_index}, "
            f"from_logits={self.from_logits}, bins={self.bins}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}"
        )


class LovaszHingeLoss(nn.Module):
    """Module form of :func:`lovasz.lovasz_hinge`.

    Example:
        >>> import torch, lovasz
        >>> loss = lovasz.LovaszHingeLoss()(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8)))
    """

    def __init__(
        self,
        *,
        per_image: bool = True,
        ignore_index: int | None = None,
        bins: int | None = None,
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _checks.check_options(ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend)
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.bins = bins
        self.reduction = reduction
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_hinge(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            bins=self.bins,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, bins={self.bins}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}"
        )


class LovaszSigmoidLoss(nn.Module):
    """Module form of :func:`lovasz.lovasz_sigmoid`.

    Example:
        >>> import torch, lovasz
        >>> loss = lovasz.LovaszSigmoidLoss()(torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 3, 8, 8)))
    """

    def __init__(
        self,
        *,
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
        bins: int | None = None,
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
    ) -> None:
        super().__init__()
        _checks.check_options(ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend)
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.bins = bins
        self.reduction = reduction
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_sigmoid(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            from_logits=self.from_logits,
            bins=self.bins,
            reduction=self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, from_logits={self.from_logits}, "
            f"bins={self.bins}, reduction={self.reduction!r}, backend={self.backend!r}"
        )


class CrossEntropyLovaszLoss(nn.Module):
    r"""The usual recipe: cross-entropy plus a weighted Lovász-Softmax term,

    .. math:: L = \mathrm{CE}(x, y) + \lambda_t \, L_\text{Lovász}(x, y),
              \qquad \lambda_t = \lambda \cdot \min(1, t / T_\text{warmup})

    where ``t`` counts the calls made in training mode (``warmup_steps = 0``: no warm-up).  Both terms use
    the same ``ignore_index`` and class ``weight``; the other keyword arguments go to
    :class:`LovaszSoftmaxLoss`.  The step counter is a buffer, so it is saved with the model.

    Example:
        >>> import torch, lovasz
        >>> criterion = lovasz.CrossEntropyLovaszLoss(lovasz_weight=0.5, warmup_steps=100, ignore_index=255)
        >>> loss = criterion(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8)))
    """

    steps: Tensor

    def __init__(
        self,
        *,
        lovasz_weight: float = 1.0,
        warmup_steps: int = 0,
        ignore_index: int | None = None,
        weight: Tensor | Sequence[float] | None = None,
        **lovasz_kwargs,
    ) -> None:
        super().__init__()
        if lovasz_weight < 0 or warmup_steps < 0:
            raise ValueError("lovasz_weight and warmup_steps must be non-negative")
        self.lovasz_weight = lovasz_weight
        self.warmup_steps = warmup_steps
        self.ignore_index = ignore_index
        self.lovasz = LovaszSoftmaxLoss(ignore_index=ignore_index, weight=weight, **lovasz_kwargs)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_lovasz_weight(self) -> float:
        if self.warmup_steps == 0:
            return self.lovasz_weight
        return self.lovasz_weight * min(1.0, int(self.steps) / self.warmup_steps)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        lam = self.current_lovasz_weight()
        if self.training:
            self.steps += 1
        ce = nn.functional.cross_entropy(
            input.float() if input.dtype in (torch.float16, torch.bfloat16) else input,
            target,
            weight=None if self.lovasz.weight is None else self.lovasz.weight.to(input.device),
            ignore_index=-100 if self.ignore_index is None else self.ignore_index,
        )
        if lam == 0:
            return ce
        return ce + lam * self.lovasz(input, target)
