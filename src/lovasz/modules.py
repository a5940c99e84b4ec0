"""``nn.Module`` wrappers around :mod:`lovasz.functional`, for use as ``criterion(input, target)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .functional import lovasz_hinge, lovasz_sigmoid, lovasz_softmax

__all__ = ["LovaszHingeLoss", "LovaszSigmoidLoss", "LovaszSoftmaxLoss"]


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
        classes: str | Sequence[int] = "present",
        per_image: bool = False,
        ignore_index: int | None = None,
        weight: Tensor | Sequence[float] | None = None,
        from_logits: bool = True,
        bins: int | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.classes = classes if isinstance(classes, str) else tuple(int(c) for c in classes)
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.bins = bins
        self.reduction = reduction
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
        )

    def extra_repr(self) -> str:
        return (
            f"classes={self.classes!r}, per_image={self.per_image}, ignore_index={self.ignore_index}, "
            f"from_logits={self.from_logits}, bins={self.bins}, reduction={self.reduction!r}"
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
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.bins = bins
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_hinge(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            bins=self.bins,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, bins={self.bins}, "
            f"reduction={self.reduction!r}"
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
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.bins = bins
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return lovasz_sigmoid(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            from_logits=self.from_logits,
            bins=self.bins,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, from_logits={self.from_logits}, "
            f"bins={self.bins}, reduction={self.reduction!r}"
        )
