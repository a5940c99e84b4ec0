"""The Lovász-Softmax loss of LiDAR point clouds per scan (``batch=``) against cross-entropy and the authors'
reference code, at SemanticKITTI scale.

A batch of ``--scans`` scans (90–130 k points each by default, SemanticKITTI's range after voxelisation),
20 classes, label 0 ignored as SemanticKITTI's "unlabeled" (about 5 % of the points here), the other labels
drawn from a long-tailed distribution (road and vegetation common, bicyclist rare).  The network's output
is a flat ``[N, C]`` list of points with a ``[N]`` scan id per point (the ``torch_geometric`` convention),
sorted by scan as sparse collate functions produce it.

Methods, all in one process, interleaved (the order rotates every round), after two warm-up calls:

* ``CE``: ``F.cross_entropy(x, y, ignore_index=0)`` over all points, the baseline of every ratio;
* ``lovasz_softmax per scan, exact`` / ``binned``: ``lovasz_softmax(x, y, batch=batch, per_image=True,
  ignore_index=0)`` with ``bins=None`` / the default bins (the automatic backend: the native kernels on
  the CPU), and the binned engine in PyTorch (``backend="torch"``, what runs without the C library);
* ``lovasz_softmax all points, binned``: ``per_image=False`` (one set per class over the batch, the native
  kernels on the CPU), for comparison;
* ``reference, flattened`` / ``reference, loop per scan``: the authors' public code
  (``lovasz_softmax_flat`` with ``torch.sort`` and ``lovasz_grad``, written out below as published), on all
  points at once, and called once per scan in a Python loop with the mean over scans.

The table gives the median forward+backward time, its ratio to CE, the memory the autograd graph holds
between forward and backward beyond the inputs (``saved_tensors_hooks``, each storage once) and its ratio
to CE's (CE keeps its ``[N, C]`` float32 log-probabilities), and the loss value (the per-scan exact loss
equals the per-scan reference loop).  The run happens in a child process with glibc's allocator kept
warm (:data:`bench_binned.WARM_ENV`) on ``--threads`` threads, eager.

    python benchmarks/bench_pointcloud.py --out benchmarks/results/pointcloud.md
    python benchmarks/bench_pointcloud.py --points 3000 4000 --rounds 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_binned import held_bytes, warm_child

POINTS = [90_000, 105_000, 118_000, 130_000]
CLASSES = 20
IGNORE = 0


# The authors' reference implementation (Berman et al., github.com/bermanmaxim/LovaszSoftmax,
# pytorch/lovasz_losses.py), as published, without the Variable wrapper of old PyTorch.


def lovasz_grad(gt_sorted):
    """Gradient of the Lovász extension w.r.t. sorted errors (see the paper)."""
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.float().cumsum(0)
    union = gts + (1 - gt_sorted).float().cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:  # cover 1-pixel case
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def lovasz_softmax_flat(probas, labels, classes="present"):
    """Multi-class Lovász-Softmax loss: probas [P, C] (softmax output), labels [P]."""
    if probas.numel() == 0:
        return probas * 0.0
    num_classes = probas.size(1)
    losses = []
    class_to_sum = list(range(num_classes)) if classes in ["all", "present"] else classes
    for c in class_to_sum:
        fg = (labels == c).float()  # foreground for class c
        if classes == "present" and fg.sum() == 0:
            continue
        class_pred = probas[:, c]
        errors = (fg - class_pred).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg_sorted)))
    return sum(losses) / len(losses) if losses else probas.sum() * 0.0


def flatten_probas(probas, labels, ignore=None):
    """Drops the ignored points (the reference's flatten_probas for [P, C] input)."""
    if ignore is None:
        return probas, labels
    valid = labels != ignore
    return probas[valid], labels[valid]


def reference_flat(x, t, batch):
    return lovasz_softmax_flat(*flatten_probas(F.softmax(x, dim=1), t, IGNORE))


def reference_per_scan(x, t, batch):
    probas = F.softmax(x, dim=1)
    losses = [
        lovasz_softmax_flat(*flatten_probas(probas[batch == s], t[batch == s], IGNORE))
        for s in range(int(batch.max()) + 1)
    ]
    return sum(losses) / len(losses)


def methods() -> dict[str, Callable]:
    import lovasz

    return {
        "CE": lambda x, t, b: F.cross_entropy(x, t, ignore_index=IGNORE),
        "lovasz_softmax per scan, exact": lambda x, t, b: lovasz.lovasz_softmax(
            x, t, batch=b, per_image=True, ignore_index=IGNORE, bins=None
        ),
        "lovasz_softmax per scan, binned": lambda x, t, b: lovasz.lovasz_softmax(
            x, t, batch=b, per_image=True, ignore_index=IGNORE
        ),
        "lovasz_softmax per scan, binned, backend='torch'": lambda x, t, b: lovasz.lovasz_softmax(
            x, t, batch=b, per_image=True, ignore_index=IGNORE, backend="torch", bins=lovasz.DEFAULT_BINS
        ),
        "lovasz_softmax all points, binned": lambda x, t, b: lovasz.lovasz_softmax(x, t, ignore_index=IGNORE),
        "reference, flattened": reference_flat,
        "reference, loop per scan": reference_per_scan,
    }


def scans(points: list[int], classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]``, labels ``[N]`` (0 ignored, the others long-tailed) and scan ids ``[N]``, sorted."""
    g = torch.Generator().manual_seed(seed)
    n = sum(points)
    batch = torch.cat([torch.full((p,), i, dtype=torch.long) for i, p in enumerate(points)])
    freq = 1.0 / torch.arange(1, classes, dtype=torch.float64) ** 1.3  # classes 1..C-1, long-tailed
    labels = torch.multinomial(freq, n, replacement=True, generator=g) + 1
    labels = labels.masked_fill(torch.rand(n, generator=g) < 0.05, IGNORE)
    logits = torch.randn(n, classes, generator=g) * 2
    return logits, labels, batch


def run(points: list[int], classes: int, rounds: int, names: list[str] | None = None) -> list[dict]:
    logits, labels, batch = scans(points, classes)
    fns = methods()
    names = names or list(fns)

    def step(fn: Callable) -> tuple[float, float]:
        x = logits.detach().requires_grad_(True)
        t0 = time.perf_counter()
        loss = fn(x, labels, batch)
        loss.backward()
        return time.perf_counter() - t0, float(loss)

    values = {}
    for name in names:
        step(fns[name])
        values[name] = step(fns[name])[1]
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(step(fns[name])[0])
    base = statistics.median(times[names[0]])
    base_held = None
    out = []
    for name in names:
        held = held_bytes(fns[name], logits.detach().requires_grad_(True), labels, batch)
        base_held = held if base_held is None else base_held
        med = statistics.median(times[name])
        out.append(dict(method=name, ms=1000 * med, ratio=med / base, held_mib=held / 2**20,
                        held_ratio=held / base_held if base_held else None, loss=values[name],
                        rounds=rounds))  # fmt: skip
    return out


def table(rows: list[dict], points: list[int], classes: int) -> str:
    size = f"{len(points)} scans × {'/'.join(f'{p // 1000}k' if p >= 1000 else str(p) for p in points)} points"
    lines = [
        f"{size} ({sum(points)} points), {classes} classes, label {IGNORE} ignored; allocator: warm; eager",
        "",
        "| method | fwd+bwd ms (median) | × CE | held fwd→bwd MiB | held × CE | loss | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["method"], f"{r['ms']:.1f}", f"{r['ratio']:.2f}", f"{r['held_mib']:.1f}",
                 "n/a" if r["held_ratio"] is None else f"{r['held_ratio']:.2f}", f"{r['loss']:.5f}",
                 r["rounds"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, nargs="+", default=POINTS, help="points of each scan")
    p.add_argument("--classes", type=int, default=CLASSES)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each method once per round)")
    p.add_argument("--threads", type=int, default=2)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "pointcloud")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(dict(rows=run(args.points, args.classes, args.rounds))))
        return
    rows = warm_child(
        __file__,
        ["--rounds", str(args.rounds), "--threads", str(args.threads), "--classes", str(args.classes), "--points"]
        + [str(v) for v in args.points],
    )
    torch.set_num_threads(args.threads)
    tee = Tee().start()
    print(table(rows, args.points, args.classes))
    tee.stop()
    if args.out:
        write(args.out, "Point clouds: the Lovász-Softmax loss per scan", tee.text, alloc="warm, in a child process")


if __name__ == "__main__":
    main()
