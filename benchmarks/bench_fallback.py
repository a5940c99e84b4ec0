"""The PyTorch fallback (``backend="torch"``, ``bins=<int>``) against cross-entropy and the exact engine.

The torch backend is what runs where the C library is not built, on MPS/XPU, and on CUDA without Triton.
Every method runs in one process, interleaved (the order rotates every round), after two warm-up calls;
the table gives the median forward+backward time, its ratio to cross-entropy (BCE for the binary size) in
the same process, and the memory the autograd graph holds between forward and backward beyond the inputs
(``saved_tensors_hooks``, each storage once: :func:`bench_binned.held_bytes`), also as a ratio ("n/a" where
BCE holds nothing beyond its inputs).  The run
happens in a child process with glibc's allocator kept warm (``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` raised, :data:`bench_binned.WARM_ENV`: buffers are reused, as GPU caching
allocators do), on ``--threads`` threads (2 by default), eager.  Labels are uniform (every class in every
image); softmax rows with the default ``classes="present"``.

    python benchmarks/bench_fallback.py --out benchmarks/results/fallback.md   # all sizes
    python benchmarks/bench_fallback.py --sizes 8x21x256x256 --rounds 5

Methods: CE; the exact engine (``bins=None``); the torch binned engine; the native binned engine
(``backend="native"``, for reference, where the C library is built); each as a batch loss
(``per_image=False``) and per image.
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

SIZES = ["8x21x256x256", "2x19x512x1024", "4x150x128x128", "16x1x256x256"]


def methods(binary: bool) -> dict[str, Callable]:
    import lovasz
    from lovasz.engine import registry

    bins = lovasz.DEFAULT_BINS
    engines = {"exact": dict(bins=None), "torch binned": dict(bins=bins, backend="torch")}
    if registry.native_built():
        engines["native binned"] = dict(bins=bins, backend="native")
    if binary:
        rows: dict[str, Callable] = {"BCE": lambda x, t, tf: F.binary_cross_entropy_with_logits(x, tf)}
        fn = lovasz.lovasz_hinge
    else:
        rows = {"CE": lambda x, t, tf: F.cross_entropy(x, t)}
        fn = lovasz.lovasz_softmax
    for name, kw in engines.items():
        for per_image in (False, True):
            label = f"{fn.__name__} {name}, {'per image' if per_image else 'batch'}"
            rows[label] = lambda x, t, tf, kw=kw, per_image=per_image: fn(x, t, per_image=per_image, **kw)
    return rows


def run(sizes: list[str], rounds: int) -> list[dict]:
    out = []
    for size in sizes:
        b, c, h, w = (int(v) for v in size.split("x"))
        binary = c == 1
        g = torch.Generator().manual_seed(0)
        logits = torch.randn((b, h, w) if binary else (b, c, h, w), generator=g) * 3
        target = torch.randint(0, 2 if binary else c, (b, h, w), generator=g)
        target_f = target.float()
        fns = methods(binary)
        names = list(fns)

        def step(fn: Callable, logits=logits, target=target, target_f=target_f) -> float:
            x = logits.detach().requires_grad_(True)
            t0 = time.perf_counter()
            fn(x, target, target_f).backward()
            return time.perf_counter() - t0

        for fn in fns.values():
            step(fn)
            step(fn)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(step(fns[name]))
        base = statistics.median(times[names[0]])
        base_held = None
        for name in names:
            held = held_bytes(fns[name], logits.detach().requires_grad_(True), target, target_f)
            base_held = held if base_held is None else base_held
            med = statistics.median(times[name])
            out.append(dict(size=size, method=name, ms=1000 * med, ratio=med / base, held_mib=held / 2**20,
                            held_ratio=held / base_held if base_held else None, rounds=rounds))  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "allocator: warm (glibc MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised); eager",
        "",
        "| size | method | fwd+bwd ms (median) | × CE/BCE | held fwd→bwd MiB | held × CE/BCE | rounds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [r["size"], r["method"], f"{r['ms']:.1f}", f"{r['ratio']:.2f}", f"{r['held_mib']:.1f}",
                 "n/a" if r["held_ratio"] is None else f"{r['held_ratio']:.2f}", r["rounds"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=SIZES, help="BxCxHxW; C=1 means the binary hinge loss")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (each method once per round)")
    p.add_argument("--threads", type=int, default=2)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "fallback")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(dict(rows=run(args.sizes, args.rounds), table=None, threads=torch.get_num_threads())))
        return
    rows = warm_child(__file__, ["--rounds", str(args.rounds), "--threads", str(args.threads), "--sizes", *args.sizes])
    torch.set_num_threads(args.threads)
    tee = Tee().start()
    print(table(rows))
    tee.stop()
    if args.out:
        write(args.out, "The PyTorch binned engine against cross-entropy", tee.text, alloc="warm, in a child process")


if __name__ == "__main__":
    main()
