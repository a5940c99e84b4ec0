"""EquibatchSampler: every image once per epoch, replicas, padding, streams, balance, bad arguments, Lightning."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from lovasz.sampling import EquibatchSampler, class_presence


def _presence(n=200, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    presence = torch.zeros(n, c, dtype=torch.bool)
    presence[:, 0] = True  # background everywhere
    presence[:, 1:] = torch.rand(n, c - 1, generator=g) < torch.tensor([0.5, 0.3, 0.1, 0.05, 0.02])
    return presence


def _all_batches(presence, batch_size, num_replicas, **kw):
    samplers = [
        EquibatchSampler(presence, batch_size, num_replicas=num_replicas, rank=r, **kw) for r in range(num_replicas)
    ]
    return [list(s) for s in samplers], samplers


@pytest.mark.parametrize("n", [64, 200, 203])
def test_every_image_exactly_once_and_no_duplicate_in_a_batch(n):
    presence = _presence(n)
    sampler = EquibatchSampler(presence, batch_size=8, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-n // 8)
    assert all(len(b) == 8 and len(set(b)) == 8 for b in batches)
    counts = Counter(i for b in batches for i in b)
    assert set(counts) == set(range(n))  # every image
    pads = sum(counts.values()) - n
    assert pads == (-n) % 8  # padded to full batches only
    assert sorted(counts.values()) == [1] * (n - pads) + [2] * pads
    assert all(isinstance(i, int) for b in batches for i in b)


def test_two_rare_classes_each_in_one_image_never_duplicated():
    presence = torch.zeros(10, 3, dtype=torch.bool)
    presence[:, 0] = True
    presence[3, 1] = True
    presence[7, 2] = True
    for batch_size in (1, 2, 3, 4, 10):
        for epoch in range(5):
            sampler = EquibatchSampler(presence, batch_size, seed=epoch)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert all(len(set(b)) == len(b) for b in batches)
            assert Counter(i for b in batches for i in b).keys() == set(range(10))
            # the two rare images are spread when there are several batches and no padded copies
            if len(batches) > 1 and 10 % batch_size == 0:
                assert not any({3, 7} <= set(b) for b in batches)


@pytest.mark.parametrize("n, batch_size, replicas", [(64, 8, 2), (200, 8, 2), (203, 5, 3), (7, 2, 4), (3, 1, 8)])
def test_replicas_disjoint_equal_and_cover_everything(n, batch_size, replicas):
    presence = _presence(n)
    per_rank, samplers = _all_batches(presence, batch_size, replicas, seed=1)
    lengths = {len(b) for b in per_rank}
    assert len(lengths) == 1 and lengths == {len(s) for s in samplers}  # equal lengths, as __len__ says
    size = min(batch_size, n)
    assert all(len(batch) == size and len(set(batch)) == size for b in per_rank for batch in b)
    flat = [i for b in per_rank for batch in b for i in batch]
    assert set(flat) == set(range(n))
    assert len(flat) - n == (-n) % (replicas * size)  # padding only
    if n % (replicas * size) == 0:  # no padding: the replicas are disjoint
        sets = [{i for batch in b for i in batch} for b in per_rank]
        assert sum(len(s) for s in sets) == n


def test_heavy_padding_never_puts_an_image_twice_in_a_batch():
    rng = np.random.default_rng(0)
    for case in range(150):
        n, batch_size, replicas = int(rng.integers(1, 10)), int(rng.integers(1, 10)), int(rng.integers(1, 7))
        presence = torch.from_numpy(rng.random((n, 3)) < 0.5)
        presence[0, 0] = True
        per_rank, _ = _all_batches(presence, batch_size, replicas, seed=case)
        size = min(batch_size, n)
        assert len({len(b) for b in per_rank}) == 1
        assert all(len(batch) == len(set(batch)) == size for b in per_rank for batch in b)
        assert {i for b in per_rank for batch in b for i in batch} == set(range(n))


def test_drop_last_uses_each_image_at_most_once():
    presence = _presence(203)
    per_rank, samplers = _all_batches(presence, 8, 2, seed=0, drop_last=True)
    assert all(len(s) == 203 // 16 for s in samplers)
    flat = [i for b in per_rank for batch in b for i in batch]
    assert len(flat) == len(set(flat)) == (203 // 16) * 16
    # the dropped remainder changes with the epoch
    dropped = []
    for epoch in range(3):
        samplers[0].set_epoch(epoch)
        samplers[1].set_epoch(epoch)
        used = {i for s in samplers for batch in s for i in batch}
        dropped.append(frozenset(range(203)) - used)
    assert len(set(dropped)) > 1


def test_batch_size_larger_than_the_data_set():
    presence = _presence(5)
    batches = list(EquibatchSampler(presence, batch_size=8))
    assert len(batches) == 1 and sorted(batches[0]) == [0, 1, 2, 3, 4]
    per_rank, _ = _all_batches(presence, 8, 2)
    assert [len(b) for b in per_rank] == [1, 1]
    assert all(sorted(b[0]) == [0, 1, 2, 3, 4] for b in per_rank)  # padded with a whole second copy
    with pytest.raises(ValueError, match="drop_last"):
        EquibatchSampler(presence, batch_size=8, drop_last=True)


def test_deterministic_and_streams_differ_by_seed_and_epoch():
    presence = _presence(200)

    def run(seed, epoch):
        s = EquibatchSampler(presence, 8, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert run(3, 0) == run(3, 0) == list(EquibatchSampler(presence, batch_size=8, seed=3))
    assert run(3, 1) == run(3, 1)
    assert run(3, 1) != run(3, 0)
    assert run(0, 1) != run(1, 0)  # seed + epoch would collide here
    assert run(0, 2) != run(2, 0) and run(1, 1) != run(2, 0)


def test_rare_classes_are_spread_over_batches():
    """Kept from the first version: every class appears where it can, and far more evenly than at random."""
    g = torch.Generator().manual_seed(0)
    presence = _presence(200)
    sampler = EquibatchSampler(presence, batch_size=8, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 200 // 8
    num_batches = len(batches)
    hit = torch.stack([presence[b].any(0) for b in batches])  # [batches, C]
    counts = presence.sum(0)
    # each class lands in min(images of it, batches) batches: as spread as exactly-once allows
    assert hit.sum(0).tolist() == counts.clamp(max=num_batches).tolist()
    random_batches = torch.randperm(200, generator=g).view(-1, 8)
    random_hit = torch.stack([presence[b].any(0) for b in random_batches])
    assert random_hit.sum(0)[1:].sum() < hit.sum(0)[1:].sum()
    # the doc example: two classes in two images each, two batches: each batch sees both
    small = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert all(small[b].any(0).all() for b in EquibatchSampler(small, batch_size=2))


def test_images_without_any_class_and_other_input_types():
    presence = _presence(40)
    presence[:10] = False  # ten images with no class at all
    batches = list(EquibatchSampler(presence, 8))
    assert sorted(i for b in batches for i in b) == list(range(40))
    as_int = list(EquibatchSampler(presence.long(), 8))
    as_numpy = list(EquibatchSampler(presence.numpy(), 8))
    as_list = list(EquibatchSampler(presence.tolist(), 8))
    assert batches == as_int == as_numpy == as_list
    assert len(list(EquibatchSampler(presence, np.int64(8)))) == 5


def test_sampler_attribute_forwards_set_epoch():
    sampler = EquibatchSampler(_presence(32), 8)
    sampler.sampler.set_epoch(4)
    assert sampler.epoch == 4
    assert list(sampler.sampler) == [i for b in sampler for i in b]
    assert len(sampler.sampler) == 32


def test_bad_arguments():
    p = _presence(20)
    with pytest.raises(ValueError, match="class_presence"):
        EquibatchSampler(torch.zeros(0, 3, dtype=torch.bool), batch_size=2)
    with pytest.raises(ValueError, match="class_presence"):
        EquibatchSampler(torch.ones(5, dtype=torch.bool), batch_size=2)
    with pytest.raises(ValueError, match="class_presence"):
        EquibatchSampler(torch.ones(5, 0, dtype=torch.bool), batch_size=2)
    with pytest.raises(ValueError, match="all False"):
        EquibatchSampler(torch.zeros(5, 3, dtype=torch.bool), batch_size=2)
    with pytest.raises(ValueError, match="0/1"):
        EquibatchSampler(torch.full((5, 3), 2), batch_size=2)
    with pytest.raises(ValueError, match="0/1"):
        EquibatchSampler(torch.full((5, 3), float("nan")), batch_size=2)
    with pytest.raises(TypeError, match="class_presence"):
        EquibatchSampler("abc", batch_size=2)
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):  # what Lightning would inject
        EquibatchSampler(torch.utils.data.SequentialSampler(range(4)), batch_size=2, drop_last=False)
    with pytest.raises(ValueError, match="batch_size"):
        EquibatchSampler(p, batch_size=0)
    for bad in (True, 2.0, "8", None):
        with pytest.raises(TypeError, match="batch_size"):
            EquibatchSampler(p, batch_size=bad)
    with pytest.raises(TypeError, match="seed"):
        EquibatchSampler(p, 2, seed=1.5)
    with pytest.raises(TypeError, match="drop_last"):
        EquibatchSampler(p, 2, drop_last=1)
    with pytest.raises(ValueError, match="num_replicas"):
        EquibatchSampler(p, 2, num_replicas=0)
    with pytest.raises(TypeError, match="num_replicas"):
        EquibatchSampler(p, 2, num_replicas=True)
    with pytest.raises(ValueError, match="rank"):
        EquibatchSampler(p, 2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank"):
        EquibatchSampler(p, 2, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match="rank"):
        EquibatchSampler(p, 2, rank=1)  # num_replicas defaults to 1 without torch.distributed
    with pytest.raises(TypeError):
        EquibatchSampler(p, 2, 10)  # the old positional num_batches is gone
    sampler = EquibatchSampler(p, 2)
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch"):
        sampler.set_epoch(1.0)


def test_replicas_default_from_torch_distributed(monkeypatch):
    presence = _presence(48)
    assert (EquibatchSampler(presence, 8).num_replicas, EquibatchSampler(presence, 8).rank) == (1, 0)
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    sampler = EquibatchSampler(presence, 8, seed=4)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (3, 2, 2)
    assert list(sampler) == list(EquibatchSampler(presence, 8, seed=4, num_replicas=3, rank=2))
    assert EquibatchSampler(presence, 8, rank=0).num_replicas == 3  # each default on its own


def test_class_presence():
    masks = torch.tensor([[[0, 1], [255, 1]], [[2, 2], [2, 0]]])
    assert class_presence(masks, 3, ignore_index=255).tolist() == [[True, True, False], [True, False, True]]


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i)


def test_lightning_trainer_runs_with_the_sampler_and_advances_the_epoch():
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen: list[list[list[int]]] = []

        def on_train_epoch_start(self):
            self.seen.append([])

        def training_step(self, batch, batch_idx):
            x, idx = batch
            self.seen[-1].append(idx.tolist())
            return self.layer(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    presence = _presence(36)
    sampler = EquibatchSampler(presence, batch_size=8, seed=5)
    loader = torch.utils.data.DataLoader(_Indices(36), batch_sampler=sampler)
    module = Module()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, loader)
    assert len(module.seen) == 2
    for epoch, seen in enumerate(module.seen):
        reference = EquibatchSampler(presence, batch_size=8, seed=5)
        reference.set_epoch(epoch)
        assert seen == list(reference)  # Lightning called set_epoch through sampler.sampler
    assert module.seen[0] != module.seen[1]
