"""Where ``bins="auto"`` switches engines: the exact and the binned engine timed on the same calls, around
the group size (``auto_exact_below`` of the binned backend, :mod:`lovasz.engine.registry`) at which the
automatic choice moves from exact to binned.  Run it once as it is (the native kernels) and once with
``LOVASZ_NO_NATIVE=1`` (the PyTorch engine, as where no C compiler was found).

    python benchmarks/bench_auto.py
    python benchmarks/bench_auto.py --out benchmarks/results/auto.md

Each row is one call shape (softmax with ``classes="all"``, per image and over the batch; the binary
hinge per image), forward+backward, median of ``--rounds`` rounds after one warm-up, every method
interleaved in each round.  "auto picks" is what ``bins="auto"`` chose for that call, and "faster" which
engine was faster: the rows show whether the threshold sits where the two cross.  Buffers are reused
between rounds (the process's allocator as inherited).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lovasz
from lovasz.engine import backends

# (B, C, H, W, per_image): groups of 256 to 65536 elements.
CASES = [
    (2, 21, 16, 16, True), (2, 21, 32, 32, True), (2, 21, 48, 48, True), (2, 21, 64, 64, True),
    (2, 21, 96, 96, True), (2, 21, 128, 128, True), (1, 21, 32, 32, False), (2, 21, 32, 32, False),
    (1, 21, 64, 64, False), (4, 21, 64, 64, False), (2, 150, 32, 32, True), (2, 150, 64, 64, True),
    (4, 1, 32, 32, True), (4, 1, 64, 64, True), (4, 1, 128, 128, True),
]  # fmt: skip


def call(loss: str, x: torch.Tensor, t: torch.Tensor, per_image: bool, bins) -> None:
    x = x.detach().requires_grad_(True)
    if loss == "softmax":
        out = lovasz.lovasz_softmax(x, t, per_image=per_image, classes="all", bins=bins)
    else:
        out = lovasz.lovasz_hinge(x, t, per_image=per_image, bins=bins)
    out.backward()


def main() -> None:
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    add_out_argument(p, "auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    tee = Tee().start()
    binned = backends.resolve("auto", torch.zeros(1, 2, 8), lovasz.DEFAULT_BINS).backend
    print(f"binned backend: {binned.name}, auto_exact_below = {binned.auto_exact_below} elements per group; "
          f"{args.rounds} rounds, {args.threads} threads\n")  # fmt: skip
    print("| call | elements per group | exact (ms) | binned (ms) | auto picks | faster |")
    print("|---|---:|---:|---:|---|---|")
    agree = 0
    for b, c, h, w, per_image in CASES:
        loss = "softmax" if c > 1 else "hinge"
        x = torch.randn(b, c, h, w, generator=g) * 3 if c > 1 else torch.randn(b, h, w, generator=g) * 3
        t = torch.randint(0, c, (b, h, w), generator=g) if c > 1 else (torch.rand(b, h, w, generator=g) < 0.3).long()
        methods = {"exact": None, "binned": lovasz.DEFAULT_BINS}
        times: dict[str, list[float]] = {k: [] for k in methods}
        for bins in methods.values():  # warm-up
            call(loss, x, t, per_image, bins)
        for r in range(args.rounds):
            for name, bins in list(methods.items()) if r % 2 else list(methods.items())[::-1]:
                start = time.perf_counter()
                call(loss, x, t, per_image, bins)
                times[name].append(time.perf_counter() - start)
        exact, binned = (statistics.median(times[k]) * 1e3 for k in ("exact", "binned"))
        picked = (
            "exact"
            if backends.auto_bins("auto", x, per_image=per_image, channels=1 if c == 1 else None) is None
            else "binned"
        )
        faster = "exact" if exact < binned else "binned"
        agree += picked == faster
        group = h * w * (1 if per_image else b)
        shape = f"{loss} {b}×{c}×{h}×{w}, {'per image' if per_image else 'batch'}"
        print(f"| {shape} | {group} | {exact:.2f} | {binned:.2f} | {picked} | {faster} |")
    print(f"\nauto picked the faster engine in {agree} of {len(CASES)} calls")
    tee.stop()
    if args.out:
        write(args.out, "bins='auto': exact against binned around the switch", tee.text)


if __name__ == "__main__":
    main()
