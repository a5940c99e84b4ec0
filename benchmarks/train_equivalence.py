"""Training equivalence: the same model trained with the exact and the binned engine reaches the same IoU.

    python benchmarks/train_equivalence.py [--seeds 5] [--steps 200]
    python benchmarks/train_equivalence.py --small-objects --seeds 3
    python benchmarks/train_equivalence.py --small-objects --seeds 3 --out benchmarks/results/train_equivalence.md

Data: generated images with a disc, a square and a bar (4 classes with background) under heavy noise.  For
each seed both engines start from the same initial weights and see the same batches; the table reports
the dataset mIoU on a fixed held-out set (mean ± std over seeds) and the per-seed differences.

``--small-objects``: objects of 1–3 pixels a side (3 classes, 1–2 objects of each per 32×32 image), trained
with the per-image loss, where the exact weights concentrate on a few top-ranked pixels; the table adds
the small-object IoU (per image and class present, averaged) and paired differences with 95 % intervals.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lovasz
from lovasz.experiments.data import synthetic_shapes


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 4, 1),
    )  # fmt: skip


def miou(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, c: int = 4) -> float:
    with torch.no_grad():
        pred = model(images).argmax(1)
    ious = []
    for k in range(c):
        inter = ((pred == k) & (targets == k)).sum().item()
        union = ((pred == k) | (targets == k)).sum().item()
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


def small_objects(g: torch.Generator, batch: int, size: int = 32, noise: float = 0.7):
    """Images whose objects are 1–3 pixels a side: 1–2 objects of each of 3 classes per image."""
    target = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        for k in range(1, 4):
            for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
                s = int(torch.randint(1, 4, (1,), generator=g))
                y, x = torch.randint(0, size - s, (2,), generator=g).tolist()
                target[i, y : y + s, x : x + s] = k
    image = torch.stack([(target == k).float() for k in range(1, 4)], 1)
    return image + noise * torch.randn(image.shape, generator=g), target


def small_object_iou(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over (image, object class present in it) of that class's IoU in that image."""
    with torch.no_grad():
        pred = model(images).argmax(1)
    ious = []
    for i in range(images.shape[0]):
        for k in range(1, 4):
            gt = targets[i] == k
            if gt.any():
                ious.append(((pred[i] == k) & gt).sum().item() / ((pred[i] == k) | gt).sum().item())
    return sum(ious) / len(ious)


def train(seed: int, bins: int | None, steps: int, test, small: bool = False) -> dict[str, float]:
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(steps):
        image, target = small_objects(g, 16) if small else synthetic_shapes(g, 16)
        loss = lovasz.lovasz_softmax(model(image), target, bins=bins, per_image=small)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {"mIoU": miou(model, *test)}
    if small:
        out["small-object IoU"] = small_object_iou(model, *test)
    return out


# Two-sided 97.5 % quantiles of Student's t for n - 1 = 1..10 degrees of freedom.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def _interval(values: list[float]) -> str:
    """``mean ± half-width`` of the 95 % t interval (one value: the value alone)."""
    if len(values) < 2:
        return f"{values[0]:+.4f} (one seed)"
    n = len(values)
    t = T975[min(n - 1, len(T975)) - 1]
    return f"{statistics.mean(values):+.4f} ± {t * statistics.stdev(values) / n**0.5:.4f}"


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _mean_std(values: list[float]) -> str:
    """``mean ± std``; the standard deviation needs two values (one seed: the value alone)."""
    if len(values) < 2:
        return f"{values[0]:.4f} (one seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=_positive_int, default=5)
    p.add_argument("--steps", type=_positive_int, default=200)
    p.add_argument("--bins", type=_positive_int, default=lovasz.DEFAULT_BINS, help="binned engine budget (>= 64)")
    p.add_argument("--small-objects", action="store_true", help="1-3 pixel objects, per-image loss")
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "train_equivalence")
    args = p.parse_args()
    if args.bins < 64:
        p.error(f"--bins must be at least 64, got {args.bins}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    make_data = small_objects if args.small_objects else synthetic_shapes
    test = make_data(torch.Generator().manual_seed(99), 256)
    runs: dict[str, list[dict[str, float]]] = {"exact": [], "binned": []}
    t0 = time.time()
    for seed in range(args.seeds):
        runs["exact"].append(train(seed, None, args.steps, test, args.small_objects))
        runs["binned"].append(train(seed, args.bins, args.steps, test, args.small_objects))
        line = "  ".join(f"{engine} {k} {v:.4f}" for engine in runs for k, v in runs[engine][-1].items())
        print(f"seed {seed}: {line}", flush=True)
    metrics = list(runs["exact"][0])
    data = "small objects (1-3 px), per-image loss" if args.small_objects else "shapes, batch loss"
    print()
    tee = Tee().start()
    print(f"{data}; {args.seeds} seeds × {args.steps} steps, bins={args.bins}, {time.time() - t0:.0f} s\n")
    print("| engine | " + " | ".join(f"test {m} (mean ± std over seeds)" for m in metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for name, rows in runs.items():
        print(f"| {name} | " + " | ".join(_mean_std([r[m] for r in rows]) for m in metrics) + " |")
    print("| binned − exact, paired (95 % interval) | " + " | ".join(
        _interval([b[m] - e[m] for e, b in zip(runs["exact"], runs["binned"], strict=True)]) for m in metrics
    ) + " |")  # fmt: skip
    tee.stop()
    if args.out:
        write(args.out, "Training equivalence: exact and binned engines", tee.text)


if __name__ == "__main__":
    main()
