"""Training equivalence: the same model trained with the exact and the binned engine reaches the same IoU.

    python benchmarks/train_equivalence.py [--seeds 5] [--steps 200]

Data: generated images with a disc, a square and a bar (4 classes with background) under heavy noise.  For
each seed both engines start from the same initial weights and see the same batches; the table reports
the dataset mIoU on a fixed held-out set (mean ± std over seeds) and the per-seed differences.
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


def train(seed: int, bins: int | None, steps: int, test) -> float:
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1000 + seed)
    for _ in range(steps):
        image, target = synthetic_shapes(g, 16)
        loss = lovasz.lovasz_softmax(model(image), target, bins=bins)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return miou(model, *test)


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
    args = p.parse_args()
    if args.bins < 64:
        p.error(f"--bins must be at least 64, got {args.bins}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    test = synthetic_shapes(torch.Generator().manual_seed(99), 256)
    results: dict[str, list[float]] = {"exact": [], "binned": []}
    t0 = time.time()
    for seed in range(args.seeds):
        results["exact"].append(train(seed, None, args.steps, test))
        results["binned"].append(train(seed, args.bins, args.steps, test))
        print(
            f"seed {seed}: exact mIoU {results['exact'][-1]:.4f}  binned mIoU {results['binned'][-1]:.4f}", flush=True
        )
    diffs = [b - e for e, b in zip(results["exact"], results["binned"], strict=True)]
    print(f"\n{args.seeds} seeds × {args.steps} steps, bins={args.bins}, {time.time() - t0:.0f} s\n")
    print("| engine | test mIoU (mean ± std over seeds) |")
    print("|---|---|")
    for name, vals in results.items():
        print(f"| {name} | {_mean_std(vals)} |")
    if len(diffs) > 1:
        print(f"\nbinned − exact, per seed: mean {statistics.mean(diffs):+.4f}, std {statistics.stdev(diffs):.4f}")
    else:
        print(f"\nbinned − exact: {diffs[0]:+.4f} (one seed)")


if __name__ == "__main__":
    main()
