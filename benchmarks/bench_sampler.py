"""How well EquibatchSampler spreads rare classes over batches, against shuffled batches.

    python benchmarks/bench_sampler.py [--epochs 20] [--batch-size 8]
    python benchmarks/bench_sampler.py --out benchmarks/results/sampler.md

Data: a Pascal-like presence matrix, 1,464 images (the size of VOC 2012 ``train``) and 21 classes:
background in every image, ``person`` in 442 images, the 19 other classes in 148 down to 63 images (about the
per-class image counts of VOC 2012 ``train``), placed at random; an image left without an object gets one.
For each of the 5 rarest classes the table gives the fraction of batches that contain it, averaged over the
epochs, next to the most any sampler can reach when every image is used once per epoch (``n_c / batches``).
"""

from __future__ import annotations

import argparse
import time

import torch

from lovasz.sampling import EquibatchSampler

# images per object class (person first), roughly VOC 2012 train's
COUNTS = [442, 148, 131, 128, 121, 105, 93, 88, 87, 84, 83, 82, 82, 81, 78, 78, 68, 65, 64, 63]


def pascal_like(num_images: int = 1464, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    presence = torch.zeros(num_images, 1 + len(COUNTS), dtype=torch.bool)
    presence[:, 0] = True  # background
    for c, n in enumerate(COUNTS, start=1):
        presence[torch.randperm(num_images, generator=g)[:n], c] = True
    empty = torch.nonzero(~presence[:, 1:].any(1)).flatten()
    weights = torch.tensor(COUNTS, dtype=torch.float)
    presence[empty, 1 + torch.multinomial(weights, len(empty), replacement=True, generator=g)] = True
    return presence


def shuffled_batches(n: int, batch_size: int, g: torch.Generator) -> list[list[int]]:
    perm = torch.randperm(n, generator=g)
    return [perm[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def coverage(presence: torch.Tensor, batches: list[list[int]], classes: list[int]) -> list[float]:
    """Fraction of ``batches`` containing each class of ``classes``."""
    hit = torch.stack([presence[b][:, classes].any(0) for b in batches])
    return hit.float().mean(0).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=1464)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "sampler")
    args = p.parse_args()

    presence = pascal_like(args.images)
    n = presence.shape[0]
    counts = presence.sum(0)
    rarest = counts.argsort(stable=True)[:5].tolist()
    sampler = EquibatchSampler(presence, args.batch_size, seed=0)
    g = torch.Generator().manual_seed(0)
    equi, shuffled = torch.zeros(5), torch.zeros(5)
    seconds = 0.0
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        batches = list(sampler)
        seconds += time.perf_counter() - t0
        equi += torch.tensor(coverage(presence, batches, rarest))
        shuffled += torch.tensor(coverage(presence, shuffled_batches(n, args.batch_size, g), rarest))
    equi, shuffled = equi / args.epochs, shuffled / args.epochs
    num_batches = len(sampler)

    tee = Tee().start()
    print(
        f"{n} images, {presence.shape[1]} classes, batch size {args.batch_size} ({num_batches} batches), "
        f"{args.epochs} epochs; EquibatchSampler: {1000 * seconds / args.epochs:.0f} ms per epoch\n"
    )
    print("| class (images) | shuffled batches | EquibatchSampler | most possible |")
    print("|---|---:|---:|---:|")
    for k, c in enumerate(rarest):
        best = min(int(counts[c]), num_batches) / num_batches
        print(f"| class {c} ({int(counts[c])}) | {shuffled[k]:.1%} | {equi[k]:.1%} | {best:.1%} |")
    tee.stop()
    if args.out:
        write(args.out, "Rare classes per batch: EquibatchSampler against shuffled batches", tee.text)


if __name__ == "__main__":
    main()
