"""The loss over several processes (``process_group=``), in real gloo process groups of 2 and 3 ranks,
against one process on the whole batch: the value on every rank equals the one-process loss of the
concatenated inputs, and each rank's gradient is ``world_size ×`` its slice of the one-process gradient.
Unequal local batches, an empty rank, a fully ignored rank and a class present on one rank only are
covered; and through ``DistributedDataParallel`` the parameter gradient equals the one-process one."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lovasz
from conftest import CPU_FUSED
from lovasz.engine import registry

SPLITS = {2: [3, 1], 3: [2, 0, 2]}  # images per rank; the global batch has 4
ENGINES = [(None, "auto"), (256, "torch")] + [(256, name) for name in CPU_FUSED]


def _configs() -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(36):
        bins, backend = ENGINES[i % len(ENGINES)]
        kind = ["softmax", "softmax", "probs", "hinge", "sigmoid", "multilabel"][i % 6]
        cfg = dict(
            kind=kind,
            seed=i,
            bins=bins,
            backend=backend,
            per_image=(i // len(ENGINES)) % 2 == 1,
            ignore=rng.random() < 0.5,
            reduction=rng.choice(["mean", "mean", "sum"]),
            special=rng.choice(["none", "none", "one_rank_class", "ignored_rank"]),
        )
        if kind in ("softmax", "probs"):
            cfg["classes"] = rng.choice(["present", "all", [0, 2]])
            cfg["weight"] = rng.random() < 0.4
        out.append(cfg)
    return out


def _inputs(cfg: dict):
    """The global batch (4 images) of a configuration."""
    g = torch.Generator().manual_seed(cfg["seed"])
    kind = cfg["kind"]
    if kind in ("softmax", "probs"):
        x = torch.randn(4, 4, 6, 7, generator=g) * 2
        if kind == "probs":
            x = x.softmax(1)
        t = torch.randint(0, 3, (4, 6, 7), generator=g)  # class 3 absent everywhere
        if cfg["special"] == "one_rank_class":
            t[0, 2:4, 2:5] = 3  # present in image 0 only (rank 0)
    elif kind == "multilabel":
        x = torch.randn(4, 3, 5, 6, generator=g) * 2
        t = (torch.rand(4, 3, 5, 6, generator=g) < 0.3).long()
    else:
        x = torch.randn(4, 6, 7, generator=g) * 2
        t = (torch.rand(4, 6, 7, generator=g) < 0.3).long()
    if cfg["ignore"]:
        t = t.masked_fill(torch.rand(t.shape, generator=g) < 0.2, 255)
    if cfg["special"] == "ignored_rank":
        t[3] = 255  # the last image (on the last non-empty rank) is fully ignored
    return x, t


def _loss(cfg: dict, x: torch.Tensor, t: torch.Tensor, group=None) -> torch.Tensor:
    common = dict(
        per_image=cfg["per_image"],
        ignore_index=255 if cfg["ignore"] or cfg["special"] == "ignored_rank" else None,
        bins=cfg["bins"],
        backend=cfg["backend"],
        reduction=cfg["reduction"],
        process_group=group,
    )
    kind = cfg["kind"]
    if kind in ("softmax", "probs"):
        weight = [1.0, 2.0, 0.5, 1.5] if cfg["weight"] else None
        return lovasz.lovasz_softmax(
            x, t, classes=cfg["classes"], weight=weight, from_logits=kind == "softmax", **common
        )
    if kind == "hinge":
        return lovasz.lovasz_hinge(x, t, **common)
    return lovasz.lovasz_sigmoid(x, t, **common)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        split = SPLITS[world]
        start = sum(split[:rank])
        results = []
        for cfg in _configs():
            x, t = _inputs(cfg)
            xl = x[start : start + split[rank]].clone().requires_grad_(True)
            loss = _loss(cfg, xl, t[start : start + split[rank]], dist.group.WORLD)
            loss.backward()
            results.append((loss.detach(), xl.grad))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # as DistContext.close: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_loss_over_processes_equals_the_loss_of_the_whole_batch(world, tmp_path):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    split = SPLITS[world]
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for i, cfg in enumerate(_configs()):
        x, t = _inputs(cfg)
        xg = x.clone().requires_grad_(True)
        want = _loss(cfg, xg, t)
        want.backward()
        start = 0
        for r in range(world):
            value, grad = per_rank[r][i]
            torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-6, msg=f"value, rank {r}, {cfg}")
            want_grad = world * xg.grad[start : start + split[r]]
            torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-6, msg=f"grad, rank {r}, {cfg}")
            start += split[r]


def test_a_local_loss_differs_so_the_comparison_can_fail():
    cfg = dict(_configs()[0], per_image=False, special="none")
    x, t = _inputs(cfg)
    whole = _loss(cfg, x, t)
    local = _loss(cfg, x[:3], t[:3])
    assert not torch.allclose(whole, local)


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        images, labels = _ddp_data()
        split = SPLITS[world]
        start = sum(split[:rank])
        model = DistributedDataParallel(_ddp_model())
        loss = lovasz.lovasz_softmax(
            model(images[start : start + split[rank]]), labels[start : start + split[rank]], bins=256,
            process_group=dist.group.WORLD,
        )  # fmt: skip
        loss.backward()
        torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"ddp{rank}.pt"))
        dist.barrier()  # as DistContext.close: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def _ddp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(2, 4, 3, padding=1)


def _ddp_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 2, 8, 8, generator=g), torch.randint(0, 4, (4, 8, 8), generator=g)


def test_distributed_data_parallel_gives_the_one_process_gradient(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = _ddp_model()
    images, labels = _ddp_data()
    lovasz.lovasz_softmax(model(images), labels, bins=256).backward()
    for r in range(2):
        grads = torch.load(tmp_path / f"ddp{r}.pt")
        for got, p in zip(grads, model.parameters(), strict=True):
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


def test_process_group_needs_an_initialized_default_group():
    with pytest.raises(ValueError, match="init_process_group"):
        lovasz.lovasz_softmax(torch.randn(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), process_group=object())


def _compile_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, 5, 12, 12, generator=g) * 2
        t = torch.randint(0, 5, (4, 12, 12), generator=g)
        xl, tl = x[2 * rank : 2 * rank + 2], t[2 * rank : 2 * rank + 2]
        results = []
        for bins, backend in ENGINES:

            def loss(z, target, bins=bins, backend=backend):
                return lovasz.lovasz_softmax(z, target, bins=bins, backend=backend, process_group=dist.group.WORLD)

            for fn in (loss, torch.compile(loss)):  # eager, then the default (Inductor) backend
                z = xl.clone().requires_grad_(True)
                value = fn(z, tl)
                value.backward()
                results.append((value.detach(), z.grad))
        torch.save(results, os.path.join(out_dir, f"compiled{rank}.pt"))
        dist.barrier()  # as DistContext.close: no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def test_process_group_under_torch_compile_matches_eager(tmp_path):
    # torch.compile (default backend) around a loss with a process group: the value and the gradient of
    # eager, for each engine (the collectives run eagerly, where the graph breaks).
    mp.spawn(_compile_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        results = torch.load(tmp_path / f"compiled{r}.pt")
        for (want, want_grad), (got, got_grad) in zip(results[0::2], results[1::2], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-8)


def _native_path_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    # Counts the calls of the native kernels' own global path, and compares with the generic path (the
    # PyTorch steps around the same kernels, with the native registry entry declaring no global_losses).
    from lovasz.engine import kernels_native

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(4, 6, 20, 20, generator=g) * 2
        t = torch.randint(0, 5, (4, 20, 20), generator=g).masked_fill(torch.rand(4, 20, 20, generator=g) < 0.1, 255)
        xl, tl = x[2 * rank : 2 * rank + 2], t[2 * rank : 2 * rank + 2]
        calls = []
        own = kernels_native.global_losses
        entry = registry.REGISTRY["native"]

        def counted(*args, **kwargs):
            calls.append(1)
            return own(*args, **kwargs)

        results = []
        for variant in ("native path", "generic path"):
            if variant == "native path":
                kernels_native.global_losses = counted
            else:  # the registry entry without the capability: fused takes the generic path
                caps = dataclasses.replace(entry.capabilities, global_losses=False)
                registry.REGISTRY["native"] = dataclasses.replace(entry, capabilities=caps)
            z = xl.clone().requires_grad_(True)
            loss = lovasz.lovasz_softmax(
                z, tl, bins=lovasz.DEFAULT_BINS, backend="native", ignore_index=255, process_group=dist.group.WORLD
            )
            loss.backward()
            results.append((loss.detach(), z.grad, len(calls)))
        kernels_native.global_losses = own
        registry.REGISTRY["native"] = entry
        torch.save(results, os.path.join(out_dir, f"native{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not registry.native_built(), reason="the native kernels were not built")
def test_native_global_path_equals_the_generic_one(tmp_path):
    # The native kernels' global path (send_rows, one all-reduce, global_tables: losses, table and the
    # exact head's weights in C) against the generic one (PyTorch around histogram_rows, head_rows and
    # tables_range): the same value and gradient on every rank, and the native path was taken.
    mp.spawn(_native_path_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        (native, native_grad, calls), (generic, generic_grad, _) = torch.load(tmp_path / f"native{r}.pt")
        assert calls == 1
        torch.testing.assert_close(native, generic, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(native_grad, generic_grad, rtol=1e-5, atol=1e-8)


# Ranks that disagree: every rank raises the same clear error, none aborts, and the next call works.


def _mismatch_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import copy
    import pickle

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        x = torch.randn(2, 4, 5, 5, generator=g, requires_grad=True)
        t = torch.randint(0, 4, (2, 5, 5), generator=g)
        group = dist.group.WORLD
        other = rank == world - 1  # the rank that differs
        cases = {
            "bins": dict(bins=256 if other else 4096),
            "number of classes": dict(input=x[:, :3] if other else x, target=t.clamp(max=2)),
            "per_image": dict(per_image=other),
            "classes": dict(classes=[0, 1] if other else "all"),
            "ignore_index": dict(ignore_index=255 if other else None),
            "reduction": dict(reduction="sum" if other else "mean"),
            "backend": dict(bins=256, backend="torch" if other else "auto"),
        }
        messages = {}
        for name, kw in cases.items():
            args = dict(input=x, target=t, process_group=group)
            args.update(kw)
            try:
                lovasz.lovasz_softmax(args.pop("input"), args.pop("target"), **args)
                messages[name] = None
            except ValueError as exc:
                messages[name] = str(exc)
        try:  # a different loss on one rank
            if other:
                lovasz.lovasz_sigmoid(x, (t.unsqueeze(1) == 1).expand_as(x).long(), process_group=group)
            else:
                lovasz.lovasz_softmax(x, t, process_group=group)
            messages["loss"] = None
        except ValueError as exc:
            messages["loss"] = str(exc)
        # A rank whose inputs fail their checks: it raises its own error, the peers are told and raise too
        # (no rank waits in a collective), and the ranks stay paired.
        try:
            lovasz.lovasz_softmax(x, t + 9 if other else t, process_group=group, bins=256)
            refused_input = None
        except ValueError as exc:
            refused_input = str(exc)
        # A rank whose call died after counting itself and before agreeing (an error of its own): the
        # next calls are told they are at different calls, and the ranks are paired again after that.
        if other:
            from lovasz.distributed import ProcessSync

            ProcessSync(group)
        try:
            lovasz.lovasz_softmax(x, t, process_group=group, bins=256)
            skipped = None
        except ValueError as exc:
            skipped = str(exc)
        after = lovasz.lovasz_softmax(x, t, process_group=group, bins=256)  # aligned again
        after.backward()
        # Copies of a module that holds the group.
        loss = lovasz.LovaszSoftmaxLoss(process_group=group, bins=256)
        twin = copy.deepcopy(torch.nn.Sequential(loss))[0]
        shared = twin.process_group is group
        same = torch.equal(twin(x.detach(), t), loss(x.detach(), t))
        back = pickle.loads(pickle.dumps(loss))
        try:
            back(x.detach(), t)
            refused = None
        except RuntimeError as exc:
            refused = str(exc)
        back.process_group = group
        restored = torch.equal(back(x.detach(), t), loss(x.detach(), t))
        torch.save(
            dict(messages=messages, refused_input=refused_input, skipped=skipped, after=after.detach(), shared=shared,
                 same=same,
                 refused=refused, restored=restored),
            os.path.join(out_dir, f"rank{rank}.pt"),
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_with_different_options_all_raise_naming_the_option(world, tmp_path):
    mp.spawn(_mismatch_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for r, res in enumerate(results):
        for name, message in res["messages"].items():
            assert message is not None, (r, name)
            assert "passed different options" in message and f"{name} (here" in message, (r, name, message)
        assert "different calls of the loss" in res["skipped"], (r, res["skipped"])
        expected = "labels outside" if r == world - 1 else "another rank of the process group refused its inputs"
        assert expected in res["refused_input"], (r, res["refused_input"])
        torch.testing.assert_close(res["after"], results[0]["after"])
        assert res["shared"] and res["same"] and res["restored"]
        assert "unpickled without the process group" in res["refused"]


# Ragged batches (batch=): each rank holds the points of its own scans, with local sample ids.  Rank 0 has
# samples 0 and 1 (1 fully ignored); rank 1 has samples 0 and 2 (id 1 missing).  The one-process loss is
# that of all points with each rank's ids shifted past the previous ranks' samples.
RAGGED_SAMPLES = [[(0, 30), (1, 7)], [(0, 1), (2, 25)]]
RAGGED_CONFIGS = [
    dict(kind=kind, bins=bins, backend=backend, reduction=reduction)
    for kind in ("softmax", "hinge")
    for bins, backend in [(None, "auto"), (256, "torch")] + [(256, name) for name in CPU_FUSED]
    for reduction in ("mean", "sum")
]


def _ragged_inputs(kind: str, rank: int):
    g = torch.Generator().manual_seed(rank)
    batch = torch.cat([torch.full((n,), s) for s, n in RAGGED_SAMPLES[rank]])
    batch = batch[torch.randperm(batch.numel(), generator=g)]
    n = batch.numel()
    if kind == "softmax":
        x, t = torch.randn(n, 4, generator=g) * 2, torch.randint(0, 4, (n,), generator=g)
    else:
        x, t = torch.randn(n, generator=g) * 2, torch.randint(0, 2, (n,), generator=g)
    t = t.masked_fill(torch.rand(n, generator=g) < 0.2, 255)
    if rank == 0:
        t[batch == 1] = 255
    return x, t, batch


def _ragged_loss(cfg: dict, x, t, batch, group=None):
    fn = lovasz.lovasz_softmax if cfg["kind"] == "softmax" else lovasz.lovasz_hinge
    return fn(
        x, t, batch=batch, per_image=True, ignore_index=255, bins=cfg["bins"], backend=cfg["backend"],
        reduction=cfg["reduction"], process_group=group,
    )  # fmt: skip


def _ragged_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = []
        for cfg in RAGGED_CONFIGS:
            x, t, batch = _ragged_inputs(cfg["kind"], rank)
            xl = x.clone().requires_grad_(True)
            loss = _ragged_loss(cfg, xl, t, batch, dist.group.WORLD)
            loss.backward()
            results.append((loss.detach(), xl.grad))
        torch.save(results, os.path.join(out_dir, f"ragged{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ragged_loss_over_processes_equals_the_loss_of_all_points(tmp_path):
    mp.spawn(_ragged_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"ragged{r}.pt") for r in range(2)]
    for i, cfg in enumerate(RAGGED_CONFIGS):
        parts = [_ragged_inputs(cfg["kind"], r) for r in range(2)]
        shift = 1 + max(s for s, _ in RAGGED_SAMPLES[0])
        x = torch.cat([parts[0][0], parts[1][0]]).requires_grad_(True)
        t = torch.cat([parts[0][1], parts[1][1]])
        batch = torch.cat([parts[0][2], parts[1][2] + shift])
        want = _ragged_loss(cfg, x, t, batch)
        want.backward()
        start = 0
        for r in range(2):
            value, grad = per_rank[r][i]
            n = parts[r][0].shape[0]
            torch.testing.assert_close(value, want.detach(), rtol=1e-5, atol=1e-6, msg=f"value, rank {r}, {cfg}")
            torch.testing.assert_close(grad, 2 * x.grad[start : start + n], rtol=1e-5, atol=1e-6, msg=f"{r} {cfg}")
            start += n
