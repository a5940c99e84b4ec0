"""Equibatch: batches whose images spread the rare classes (Berman et al., Sec. 4).

With the loss computed over the batch (``per_image=False``), a batch stands in for the dataset; a rare class
whose few images land in the same batch gives IoU signal to one step instead of several.
:class:`EquibatchSampler` builds the batches of an epoch so that the images of each class are spread over
as many batches as possible, and still shows every image exactly once per epoch (split across replicas
under DDP, like :class:`torch.utils.data.DistributedSampler`).  Deterministic given ``seed`` and the epoch
(:meth:`EquibatchSampler.set_epoch`).

Example:
    >>> import torch
    >>> from lovasz.sampling import EquibatchSampler
    >>> presence = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    >>> batches = list(EquibatchSampler(presence, batch_size=2, seed=0))
    >>> all(presence[b].any(0).all() for b in batches)  # every batch sees every class
    True
    >>> sorted(i for b in batches for i in b)  # every image once
    [0, 1, 2, 3]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from ._checks import _is_integer, check_flag

__all__ = ["EquibatchSampler", "class_presence"]


def _stream_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for ``(seed, epoch)``: distinct pairs give unrelated streams (``seed + epoch``
    would give seed 0 / epoch 1 the same batches as seed 1 / epoch 0)."""
    digest = hashlib.blake2b(f"lovasz.EquibatchSampler:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _check_int(value: object, name: str, minimum: int) -> int:
    if not _is_integer(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)  # type: ignore[call-overload]
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_presence(class_presence: object) -> Tensor:
    if isinstance(class_presence, Sampler):
        # What Lightning passes when it tries to inject a DistributedSampler into a custom batch sampler.
        raise TypeError(
            f"class_presence must be an [N, C] bool matrix, got a {type(class_presence).__name__}. Under Lightning "
            "with several devices, use Trainer(use_distributed_sampler=False) and give EquibatchSampler "
            "num_replicas=trainer.world_size, rank=trainer.global_rank"
        )
    try:
        presence = torch.as_tensor(class_presence).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"class_presence must be an [N, C] bool matrix, got {type(class_presence).__name__}") from exc
    if presence.dim() != 2 or presence.shape[0] == 0 or presence.shape[1] == 0:
        raise ValueError(
            f"class_presence must be a non-empty [N, C] matrix (images × classes), got shape {tuple(presence.shape)}"
        )
    if presence.dtype != torch.bool:
        if presence.is_complex():
            raise TypeError(f"class_presence must hold bools or 0/1, got dtype {presence.dtype}")
        if not bool(((presence == 0) | (presence == 1)).all()):
            raise ValueError("class_presence must hold bools or 0/1 values (1: the image contains the class)")
        presence = presence != 0
    else:
        presence = presence.clone()  # not a view of the caller's array
    if not bool(presence.any()):
        raise ValueError(
            "class_presence is all False: no image contains any class, so there is nothing to balance "
            "(build it with lovasz.sampling.class_presence(masks, num_classes, ignore_index))"
        )
    return presence


def _default_replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    num_replicas = _check_int(num_replicas, "num_replicas", 1)
    rank = _check_int(rank, "rank", 0)
    if rank >= num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas - 1] = [0, {num_replicas - 1}], got {rank}")
    return num_replicas, rank


class EquibatchSampler(Sampler[list[int]]):
    """Batch sampler that spreads the images of each class, rarest classes first, over the batches.

    Pass it to a ``DataLoader`` as ``batch_sampler``.  Each epoch:

    * every image is used exactly once across all replicas.  When ``N`` is not a multiple of
      ``num_replicas * batch_size``, the epoch is padded with repeated images (random ones, as
      :class:`~torch.utils.data.DistributedSampler` pads) so that every replica gets the same number of full
      batches; with ``drop_last=True`` the remainder is dropped instead (a random subset, so every image is
      still seen over the epochs), and no image is repeated;
    * no batch holds an index twice; batches hold ``batch_size`` images, or all ``N`` when
      ``batch_size > N`` (``drop_last=False`` only);
    * replicas get disjoint batches (apart from the padding) and the same number of them;
    * images are placed rarest class first: an image goes to the batch holding the fewest images of its
      classes (each class weighted by ``1 / its number of images``, so the rarest one dominates), then the
      emptiest such batch, then a random one.  The ``n_c`` images of a class land in ``min(n_c, batches)``
      different batches wherever the batch sizes allow it;
    * the random choices come from a generator seeded from a hash of ``(seed, epoch)``.

    Args:
        class_presence: ``[N, C]`` bool (or 0/1) matrix, ``class_presence[i, c]`` if image ``i`` contains class
            ``c`` (see :func:`class_presence`).  Images without any class are fine; they fill the batches.
        batch_size: images per batch.
        seed: base seed; the same on every replica.
        num_replicas: number of processes (default: the world size of ``torch.distributed`` when it is
            initialized, else 1).
        rank: this process's rank in ``[0, num_replicas)`` (default: from ``torch.distributed``, else 0).
        drop_last: drop the remainder instead of padding.

    Call :meth:`set_epoch` at the start of each epoch (Lightning does it: it calls
    ``dataloader.batch_sampler.sampler.set_epoch``, see :attr:`sampler`).  Under Lightning with several
    devices, give the trainer ``use_distributed_sampler=False`` (Lightning cannot re-create a custom batch
    sampler around its own ``DistributedSampler``) and this sampler ``num_replicas=trainer.world_size`` and
    ``rank=trainer.global_rank``.
    """

    def __init__(
        self,
        class_presence: Tensor,
        batch_size: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ):
        presence = _check_presence(class_presence)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        if not _is_integer(seed):
            raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
        self.seed = int(seed)
        self.drop_last = check_flag(drop_last, "drop_last")
        self.num_replicas, self.rank = _default_replicas(num_replicas, rank)
        self.epoch = 0
        n = presence.shape[0]
        self.presence = presence
        self._batch_len = min(self.batch_size, n)
        per_round = self.num_replicas * self._batch_len
        if self.drop_last:
            if n < self.num_replicas * self.batch_size:
                raise ValueError(
                    f"drop_last=True with {n} images, batch_size={self.batch_size} and num_replicas="
                    f"{self.num_replicas} leaves no batch; use drop_last=False or a smaller batch_size"
                )
            self.total_size = (n // per_round) * per_round
        else:
            self.total_size = math.ceil(n / per_round) * per_round
        pres = presence.numpy()
        counts = pres.sum(0)  # images per class
        self._weight = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        self._classes_of = [np.flatnonzero(row) for row in pres]
        rarest = np.where(pres, counts[None, :], np.iinfo(np.int64).max).min(1)
        self._rarity = rarest  # count of each image's rarest class (max int: no class)

    def set_epoch(self, epoch: int) -> None:
        """Use the batches of ``epoch`` (call it at the start of each epoch, on every replica)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    @property
    def sampler(self) -> _EpochOrder:
        """This replica's indices of the epoch in batch order, as a ``Sampler[int]`` (what ``BatchSampler.sampler``
        is); its ``set_epoch`` is this sampler's, so loops that call ``batch_sampler.sampler.set_epoch``
        (Lightning) advance the epoch."""
        return _EpochOrder(self)

    def __len__(self) -> int:
        return self.total_size // (self.num_replicas * self._batch_len)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches(self.epoch)
        yield from batches[self.rank :: self.num_replicas]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """All replicas' batches of ``epoch``, in order (replica ``r`` takes every ``num_replicas``-th)."""
        g = torch.Generator().manual_seed(_stream_seed(self.seed, epoch))
        n, size, total = self.presence.shape[0], self._batch_len, self.total_size
        num_batches = total // size
        perm = torch.randperm(n, generator=g).numpy()
        if total <= n:
            items = perm[:total]  # drop_last: a random remainder is left out
        else:  # pad with random images; each image is repeated at most once more than any other
            reps = math.ceil((total - n) / n)
            extra = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[: total - n].numpy()
            items = np.concatenate([perm, extra])
        items = items[np.argsort(self._rarity[items], kind="stable")]  # rarest class first, ties random
        priority = torch.randperm(num_batches, generator=g).numpy()  # random tie-break between batches

        counts = np.zeros((num_batches, self.presence.shape[1]))  # images of each class in each batch
        fill = np.zeros(num_batches, dtype=np.int64)
        members: list[list[int]] = [[] for _ in range(num_batches)]
        holders: dict[int, list[int]] = {}  # image -> the batches holding it (several only when padding)
        for i in items.tolist():
            classes = self._classes_of[i]
            open_ = fill < size
            open_[holders.get(i, [])] = False
            if open_.any():
                cost = counts[:, classes] @ self._weight[classes] if classes.size else np.zeros(num_batches)
                cost = np.where(open_, cost, np.inf)
                best = np.flatnonzero(cost <= cost.min() + 1e-9)
                b = int(best[np.argmin(fill[best] * num_batches + priority[best])])
            else:
                b = self._make_room(i, members, holders, fill, counts, size)
            members[b].append(i)
            holders.setdefault(i, []).append(b)
            fill[b] += 1
            counts[b, classes] += 1
        order = torch.randperm(num_batches, generator=g).tolist()
        return [members[b] for b in order]

    def _make_room(self, i, members, holders, fill, counts, size) -> int:
        """Every batch with a free slot already holds image ``i`` (only possible when padding): move an image
        from a full batch without ``i`` to a batch with a free slot, and return the batch freed for ``i``."""
        free = int(np.flatnonzero(fill < size)[0])
        for b in range(len(members)):
            if b in holders[i]:
                continue
            for pos, j in enumerate(members[b]):
                if free not in holders[j]:
                    members[b].pop(pos)
                    holders[j].remove(b)
                    fill[b] -= 1
                    counts[b, self._classes_of[j]] -= 1
                    members[free].append(j)
                    holders[j].append(free)
                    fill[free] += 1
                    counts[free, self._classes_of[j]] += 1
                    return b
        raise AssertionError("unreachable: a full batch without the image has one to move")  # pragma: no cover


class _EpochOrder(Sampler[int]):
    """The flat index order of an :class:`EquibatchSampler` (``EquibatchSampler.sampler``)."""

    def __init__(self, batch_sampler: EquibatchSampler):
        self.batch_sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.batch_sampler._batch_len

    def __iter__(self) -> Iterator[int]:
        for batch in self.batch_sampler:
            yield from batch


def class_presence(masks: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``[N, C]`` bool presence matrix from ``[N, *spatial]`` label masks."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).long()
    if ignore_index is not None:
        flat = torch.where(flat == ignore_index, num_classes, flat)
    offset = torch.arange(n).unsqueeze(1) * (num_classes + 1)
    counts = torch.bincount((flat + offset).flatten(), minlength=n * (num_classes + 1)).view(n, -1)
    return counts[:, :num_classes] > 0
