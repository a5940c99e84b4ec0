"""Equibatch: batches whose images cover the classes as evenly as possible (Berman et al., Sec. 4).

With the loss computed over the batch (``per_image=False``), a batch stands in for the dataset; rare classes
that are missing from most batches get little of the IoU signal.  :class:`EquibatchSampler` builds each
batch greedily: it picks the class least represented so far in the batch (ties broken at random), then an
image containing it that has not been used yet in this epoch (or any image containing it, once those run
out).  Deterministic given ``seed`` and the epoch (:meth:`EquibatchSampler.set_epoch`).

Example:
    >>> import torch
    >>> from lovasz.sampling import EquibatchSampler
    >>> presence = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    >>> batches = list(EquibatchSampler(presence, batch_size=2, seed=0))
    >>> all(presence[b].any(0).all() for b in batches)  # every batch sees every class
    True
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


class EquibatchSampler(Sampler[list[int]]):
    """Batch sampler balancing class occurrence within batches.

    Args:
        class_presence: ``[N, C]`` bool, ``class_presence[i, c]`` if image ``i`` contains class ``c``
            (see :func:`class_presence`).
        batch_size: images per batch.
        num_batches: batches per epoch (default ``N // batch_size``).
        seed: base seed; epoch ``e`` uses ``seed + e``.
    """

    def __init__(self, class_presence: Tensor, batch_size: int, num_batches: int | None = None, seed: int = 0):
        presence = torch.as_tensor(class_presence, dtype=torch.bool)
        if presence.dim() != 2 or presence.shape[0] == 0:
            raise ValueError(f"class_presence must be a non-empty [N, C] bool tensor, got {tuple(presence.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.presence = presence
        self.batch_size = batch_size
        self.num_batches = num_batches if num_batches is not None else max(1, presence.shape[0] // batch_size)
        self.seed = seed
        self.epoch = 0
        self._images_of = [torch.nonzero(presence[:, c]).flatten() for c in range(presence.shape[1])]
        self._classes = [c for c in range(presence.shape[1]) if self._images_of[c].numel() > 0]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        used = torch.zeros(self.presence.shape[0], dtype=torch.bool)
        pres = self.presence.long()
        for _ in range(self.num_batches):
            counts = torch.zeros(self.presence.shape[1], dtype=torch.long)
            batch: list[int] = []
            for _ in range(self.batch_size):
                order = torch.randperm(len(self._classes), generator=g).tolist()
                c = min((self._classes[i] for i in order), key=lambda k: int(counts[k]))
                candidates = self._images_of[c]
                fresh = candidates[~used[candidates]]
                pool = fresh if fresh.numel() > 0 else candidates
                i = int(pool[torch.randint(pool.numel(), (1,), generator=g)])
                batch.append(i)
                used[i] = True
                counts += pres[i]
            yield batch


def class_presence(masks: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``[N, C]`` bool presence matrix from ``[N, *spatial]`` label masks."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).long()
    if ignore_index is not None:
        flat = torch.where(flat == ignore_index, num_classes, flat)
    offset = torch.arange(n).unsqueeze(1) * (num_classes + 1)
    counts = torch.bincount((flat + offset).flatten(), minlength=n * (num_classes + 1)).view(n, -1)
    return counts[:, :num_classes] > 0
