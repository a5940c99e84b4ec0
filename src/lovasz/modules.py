"""``nn.Module`` wrappers around :mod:`lovasz.functional`, for use as ``criterion(input, target)``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import _checks
from .functional import lovasz_hinge, lovasz_sigmoid, lovasz_softmax
from .types import BackendName, Bins, ClassSelection, Reduction

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["CrossEntropyLovaszLoss", "LovaszHingeLoss", "LovaszSigmoidLoss", "LovaszSoftmaxLoss"]


class _SharesProcessGroup:
    """Copies of a loss that holds a process group: ``copy.deepcopy`` shares the group (a handle on the
    processes, which cannot be duplicated); pickling leaves it out, and the unpickled loss refuses to run
    until ``process_group`` is set again (:mod:`lovasz.distributed`, "Copies")."""

    process_group: ProcessGroup | None

    def __deepcopy__(self, memo: dict):
        group = self.__dict__.get("process_group")
        if group is not None:
            memo[id(group)] = group
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if state.get("process_group") is not None:
            state["process_group"] = None
            state["_process_group_dropped"] = True
        return state

    def _group(self) -> ProcessGroup | None:
        if self.process_group is None and self.__dict__.get("_process_group_dropped", False):
            raise RuntimeError(
                f"this {type(self).__name__} was unpickled without the process group it was built with (a "
                "process group cannot be pickled); set loss.process_group = <group> before calling it, or "
                "None for a loss of the local batch"
            )
        return self.process_group

    def __setattr__(self, name: str, value) -> None:
        if name == "process_group":
            self.__dict__.pop("_process_group_dropped", None)
        super().__setattr__(name, value)


class LovaszSoftmaxLoss(_SharesProcessGroup, nn.Module):
    """Module form of :func:`lovasz.lovasz_softmax`; the arguments are the same keyword arguments.

    ``weight`` is registered as a buffer, so it follows ``.to(device)`` and is saved in ``state_dict``.
    The arguments are checked at construction, with the messages of the function (numpy integers are
    accepted and stored as ``int``); what needs the input (class ids below ``C``, the length of
    ``weight``, the data) is checked at each call.

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
        bins: Bins = "auto",
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
        process_group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.bins = _checks.check_options(
            ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend, per_image=per_image,
            from_logits=from_logits,
        )  # fmt: skip
        self.classes = _checks.check_class_list(classes)
        self.per_image = per_image
        self.from_logits = from_logits
        self.reduction = reduction
        self.backend = backend
        self.process_group = process_group
        self.register_buffer("weight", _checks.check_module_weight(weight))

    def forward(self, input: Tensor, target: Tensor, batch: Tensor | None = None) -> Tensor:
        """The loss of ``input`` and ``target``; ``batch``: ``[N]`` sample ids of flat points (per-sample
        losses of a ragged batch with ``per_image=True``, see :func:`lovasz.lovasz_softmax`)."""
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
            process_group=self._group(),
            batch=batch,
        )

    def extra_repr(self) -> str:
        return (
            f"classes={self.classes!r}, per_image={self.per_image}, ignore_index={self.ignore_index}, "
            f"from_logits={self.from_logits}, bins={self.bins}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}"
        )


class LovaszHingeLoss(_SharesProcessGroup, nn.Module):
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
        bins: Bins = "auto",
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
        process_group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.bins = _checks.check_options(
            ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend, per_image=per_image
        )
        self.per_image = per_image
        self.reduction = reduction
        self.backend = backend
        self.process_group = process_group

    def forward(self, input: Tensor, target: Tensor, batch: Tensor | None = None) -> Tensor:
        """The loss of ``input`` and ``target``; ``batch``: ``[N]`` sample ids of flat points (per-sample
        losses of a ragged batch with ``per_image=True``, see :func:`lovasz.lovasz_hinge`)."""
        return lovasz_hinge(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            bins=self.bins,
            reduction=self.reduction,
            backend=self.backend,
            process_group=self._group(),
            batch=batch,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, bins={self.bins}, "
            f"reduction={self.reduction!r}, backend={self.backend!r}"
        )


class LovaszSigmoidLoss(_SharesProcessGroup, nn.Module):
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
        bins: Bins = "auto",
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
        process_group: ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.bins = _checks.check_options(
            ignore_index=ignore_index, bins=bins, reduction=reduction, backend=backend, per_image=per_image,
            from_logits=from_logits,
        )  # fmt: skip
        self.per_image = per_image
        self.from_logits = from_logits
        self.reduction = reduction
        self.backend = backend
        self.process_group = process_group

    def forward(self, input: Tensor, target: Tensor, batch: Tensor | None = None) -> Tensor:
        """The loss of ``input`` and ``target``; ``batch``: ``[N]`` sample ids of flat points (per-sample
        losses of a ragged batch with ``per_image=True``, see :func:`lovasz.lovasz_sigmoid`)."""
        return lovasz_sigmoid(
            input,
            target,
            per_image=self.per_image,
            ignore_index=self.ignore_index,
            from_logits=self.from_logits,
            bins=self.bins,
            reduction=self.reduction,
            backend=self.backend,
            process_group=self._group(),
            batch=batch,
        )

    def extra_repr(self) -> str:
        return (
            f"per_image={self.per_image}, ignore_index={self.ignore_index}, from_logits={self.from_logits}, "
            f"bins={self.bins}, reduction={self.reduction!r}, backend={self.backend!r}"
        )


@torch.library.custom_op("lovasz::warmup_weight", mutates_args=())
def _warmup_weight(steps: Tensor, weight: float, warmup_steps: int) -> Tensor:
    """``weight · min(1, steps / warmup_steps)`` as a float32 0-dim tensor.

    An operator rather than inline arithmetic because of how ``torch.compile`` differentiates: its
    partitioner may recompute cheap arithmetic in the backward instead of saving it, and recomputed
    from the step buffer, which the forward has meanwhile advanced, the weight would be the next
    step's, so the gradient would silently disagree with the loss (PyTorch pull request #197039).  The
    partitioner saves the outputs of custom operators.
    """
    return torch.clamp(steps.to(torch.float32) / warmup_steps, max=1.0) * weight


@_warmup_weight.register_fake
def _(steps: Tensor, weight: float, warmup_steps: int) -> Tensor:
    return steps.new_empty((), dtype=torch.float32)


class CrossEntropyLovaszLoss(nn.Module):
    r"""The usual recipe: cross-entropy plus a weighted Lovász-Softmax term,

    .. math:: L = \mathrm{CE}(x, y) + \lambda_t \, L_\text{Lovász}(x, y),
              \qquad \lambda_t = \lambda \cdot \min(1, t / T_\text{warmup})

    where ``t`` counts the calls made in training mode (``warmup_steps = 0``: no warm-up).  Both terms use
    the same ``ignore_index`` and class ``weight``; the other keyword arguments go to
    :class:`LovaszSoftmaxLoss`.  The step counter is a buffer, so it is saved with the model.

    ``lovasz_weight`` must be a finite number ``>= 0`` and ``warmup_steps`` an int ``>= 0``.  The
    cross-entropy term is always the mean over the valid pixels and takes logits, so
    ``reduction="none"`` (per-class or per-image Lovász losses cannot be added to per-pixel
    cross-entropies, and a scalar added to them would be wrong) and ``from_logits=False`` are refused:
    combine :func:`lovasz.lovasz_softmax` and :func:`torch.nn.functional.cross_entropy` yourself for
    those.  The target may have any integer dtype (it is converted to ``torch.long`` for the
    cross-entropy, without changing the caller's tensor).

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
        self.lovasz_weight = _checks.check_lovasz_weight(lovasz_weight)
        self.warmup_steps = _checks.check_warmup_steps(warmup_steps)
        if lovasz_kwargs.get("reduction", "mean") == "none":
            raise ValueError(
                "CrossEntropyLovaszLoss does not support reduction='none': the cross-entropy is per pixel and "
                "the Lovász loss per class or per image, so they cannot be added elementwise; use "
                "reduction='mean' or 'sum', or combine lovasz.lovasz_softmax and F.cross_entropy yourself"
            )
        if lovasz_kwargs.get("from_logits", True) is False:
            raise ValueError(
                "CrossEntropyLovaszLoss takes logits (its cross-entropy term needs them); from_logits=False is "
                "not supported: pass logits, or combine lovasz.lovasz_softmax(..., from_logits=False) with "
                "F.nll_loss(p.log(), ...) yourself"
            )
        self.lovasz = LovaszSoftmaxLoss(ignore_index=ignore_index, weight=weight, **lovasz_kwargs)
        self.ignore_index = self.lovasz.ignore_index
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_lovasz_weight(self) -> float:
        if self.warmup_steps == 0:
            return self.lovasz_weight
        return self.lovasz_weight * min(1.0, int(self.steps) / self.warmup_steps)

    def _weight_now(self) -> float | Tensor:
        """``current_lovasz_weight()`` as ``forward`` uses it: during warm-up a 0-dim tensor computed from
        the step buffer by :func:`_warmup_weight`, so that ``torch.compile`` keeps it in the graph
        (``int(self.steps)`` would break the graph at every call)."""
        if self.warmup_steps == 0:
            return self.lovasz_weight
        return _warmup_weight(self.steps, self.lovasz_weight, self.warmup_steps)

    def forward(self, input: Tensor, target: Tensor, batch: Tensor | None = None) -> Tensor:
        """``CE + λ_t · Lovász``; ``batch``: ``[N]`` sample ids of flat points ``[N, C]``, for the Lovász
        term (per-sample losses with ``per_image=True``; the cross-entropy is the mean over all points)."""
        lam = self._weight_now()
        if self.training:
            self.steps += 1
        lv = self.lovasz
        if self.lovasz_weight == 0:
            # The Lovász term (whose call checks the inputs) is skipped: check them here, so that bad labels
            # get the same message as with a Lovász term rather than an error from inside cross_entropy.
            _checks.check_softmax(
                input, target, classes=lv.classes, ignore_index=lv.ignore_index, weight=lv.weight,
                from_logits=lv.from_logits, bins=lv.bins, reduction=lv.reduction, backend=lv.backend,
                per_image=lv.per_image,
            )  # fmt: skip
            lovasz_term = None
        else:
            # During warm-up the term is computed even at weight 0 (the first step): its weight is a tensor.
            lovasz_term = lv(input, target, batch)
        ce_input = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        ce = nn.functional.cross_entropy(
            ce_input,
            target.long(),  # F.cross_entropy takes int64 class ids only; .long() copies other dtypes
            # The weight buffer follows the module's dtype (.to(torch.bfloat16)); cross_entropy wants the input's.
            weight=None if lv.weight is None else lv.weight.to(input.device, ce_input.dtype),
            ignore_index=-100 if self.ignore_index is None else self.ignore_index,
        )
        if lovasz_term is None:
            return ce
        if isinstance(lam, Tensor):
            lam = lam.to(lovasz_term.dtype)
        return ce + lam * lovasz_term
