"""Why the binned Lovász-Softmax costs what it costs on this CPU: its stages against the machine's limits.

    python benchmarks/bench_limits.py                       # 8x21x256x256, 2 threads
    python benchmarks/bench_limits.py --size 2x19x512x1024
    python benchmarks/bench_limits.py --out benchmarks/results/limits.md

Measures, in one process, medians over rounds, buffers reused (no page faults):

* the machine, with PyTorch operators on the same number of threads as the kernels: streaming bandwidth
  (a float32 copy of the logits' size), the throughput of a vectorized float32 ``exp``, and of a
  histogram scatter (``index_add_`` of a float64 (count, sum) cell per element into a per-group table
  that fits in cache, with the bins of real errors);
* cross-entropy's forward+backward (``F.cross_entropy``) on the same logits;
* ``lovasz_softmax(..., bins=DEFAULT_BINS)`` split in stages: pass 1 of the CPU kernels the automatic
  choice uses (the native ones; softmax, errors, anchors; reads the logits, writes the
  kept errors) timed alone, the rest of the forward call
  (input checks, pass 2 with the tables and the exact head: reads the kept errors, one scatter per
  element) and backward (reads the kept errors, writes the gradient), all with ``LOVASZ_KEEP_ERRORS=1``;
  and, on its own row, the default backward, which recomputes the probabilities from the logits;

and prints a floor for each stage from those limits (bytes / bandwidth, elements / exp or scatter
throughput, whichever is larger, divided over the threads) next to what it takes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


WARM_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def main() -> None:
    if any(os.environ.get(k) != v for k, v in WARM_ENV.items()):  # glibc reads these at start: re-run
        sys.exit(subprocess.call([sys.executable, *sys.argv], env={**os.environ, **WARM_ENV}))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="8x21x256x256", help="BxCxHxW")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=2)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "limits")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import lovasz
    from lovasz.engine import backends, config, registry
    from lovasz.engine.histogram import Binning
    from lovasz.surrogates import SOFTMAX

    bsz, c, h, w = (int(v) for v in args.size.split("x"))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(bsz, c, h, w, generator=g) * 3
    target = torch.randint(0, c, (bsz, h, w), generator=g)
    n_el = logits.numel()
    binning = Binning.for_bins(lovasz.DEFAULT_BINS)

    # The machine, with PyTorch operators on the kernels' number of threads.
    rows = logits.view(bsz * c, h * w)
    out = torch.empty_like(rows)
    copy_ms = median_ms(lambda: out.copy_(rows), args.rounds)
    negative = -rows.abs()
    exp_ms = median_ms(lambda: torch.exp(negative, out=out), args.rounds)
    x3 = logits.view(bsz, c, h * w).contiguous()
    t2 = target.view(bsz, h * w).contiguous()
    kept = torch.empty_like(x3)
    decision = backends.resolve("auto", x3, lovasz.DEFAULT_BINS)
    if decision.name != "native":
        sys.exit(f"the stages are those of the native kernels, and this call would use {decision.name}")
    used = registry.load_kernels(decision.name)  # what the loss runs
    _, _, inv = used._pass1(x3, t2, SOFTMAX, False, None, kept, None)
    inv = torch.as_tensor(inv).numpy()
    e = kept.view(torch.int32).numpy() & 0x7FFFFFFF
    err = e.view(np.float32).transpose(1, 0, 2).reshape(c, -1)  # [C, B*N], per group
    real_bins = binning.index(torch.from_numpy(err.copy()), torch.from_numpy(inv).unsqueeze(1)).to(torch.int32)
    fg = (kept.view(torch.int32).numpy() < 0).transpose(1, 0, 2).reshape(c, -1).astype(np.int32)
    hist = torch.zeros(c * binning.num_bins * 2, 2, dtype=torch.float64)
    cell = ((torch.arange(c).unsqueeze(1) * binning.num_bins + real_bins) * 2 + torch.from_numpy(fg)).flatten().long()
    update = torch.stack([torch.ones(cell.numel(), dtype=torch.float64), torch.from_numpy(err).flatten().double()], 1)
    scatter_ms = median_ms(lambda: hist.index_add_(0, cell, update), args.rounds)
    bandwidth = 2 * n_el * 4 / (copy_ms * 1e-3)  # bytes read + written per second

    # Cross-entropy and the kernels' stages on the same logits.
    xr = logits.clone().requires_grad_(True)

    def ce() -> None:
        xr.grad = None
        F.cross_entropy(xr, target).backward()

    ce_ms = median_ms(ce, args.rounds)
    pass1_ms = median_ms(lambda: used._pass1(x3, t2, SOFTMAX, False, None, kept, None), args.rounds)
    # The real call (checks, pass 1, pass 2 with the tables and the head, head weights), then backward:
    # with the kept errors (LOVASZ_KEEP_ERRORS=1, the stages below), and with the default backward, which
    # recomputes the probabilities from the logits (its own row), interleaved.
    fwd, bwd, bwd_default = [], [], []
    for r in range(args.rounds + 1):
        for keep in ("1", "0"):
            os.environ["LOVASZ_KEEP_ERRORS"] = keep
            config.reload()
            xr.grad = None
            t0 = time.perf_counter()
            loss = lovasz.lovasz_softmax(xr, target, bins=lovasz.DEFAULT_BINS)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if r and keep == "1":
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            elif r:
                bwd_default.append(t2 - t1)
    os.environ.pop("LOVASZ_KEEP_ERRORS", None)
    config.reload()
    pass2_ms = statistics.median(fwd) * 1e3 - pass1_ms
    bwd_ms = statistics.median(bwd) * 1e3
    bwd_default_ms = statistics.median(bwd_default) * 1e3

    def floor(bytes_moved: float, exps: int = 0, scatters: int = 0) -> float:
        return max(bytes_moved / bandwidth * 1e3, exps * exp_ms / n_el, scatters * scatter_ms / n_el)

    tee = Tee().start()
    print(
        f"{args.size}, {args.threads} threads, torch {torch.__version__}, {used.NAME} kernels: streaming "
        f"{bandwidth / 1e9:.1f} GB/s (read+write), exp {n_el / exp_ms / 1e6:.2f} G/s, "
        f"histogram scatter {n_el / scatter_ms / 1e6:.2f} G elements/s\n"
    )
    print("| stage | what it must do | floor from the limits (ms) | measured (ms) |")
    print("|---|---|---:|---:|")
    mb = n_el * 4 / 1e6
    rows_out = [
        (
            "pass 1",
            f"read logits + write kept errors ({2 * mb:.0f} MB), {n_el / 1e6:.1f} M exp",
            floor(8 * n_el, n_el),
            pass1_ms,
        ),
        (
            "rest of forward: pass 2, tables, head, checks",
            f"read kept errors ({mb:.0f} MB), {n_el / 1e6:.1f} M scatters",
            floor(4 * n_el, 0, n_el),
            pass2_ms,
        ),
        ("backward", f"read kept errors + write gradient ({2 * mb:.0f} MB)", floor(8 * n_el), bwd_ms),
    ]
    for name, what, fl, ms in rows_out:
        print(f"| {name} | {what} | {fl:.1f} | {ms:.1f} |")
    total_floor = sum(r[2] for r in rows_out)
    total = pass1_ms + pass2_ms + bwd_ms
    print(f"| **Lovász kernels, total** | | **{total_floor:.1f}** | **{total:.1f}** |")
    print(
        f"| cross-entropy fwd+bwd (F.cross_entropy) | read/write {4 * mb:.0f} MB, {n_el / 1e6:.1f} M exp | "
        f"{floor(16 * n_el, n_el):.1f} | {ce_ms:.1f} |"
    )
    print(
        f"| backward without kept errors (the default): recomputes the probabilities | read logits + write "
        f"gradient ({2 * mb:.0f} MB), {n_el / 1e6:.1f} M exp | {floor(8 * n_el, n_el):.1f} | {bwd_default_ms:.1f} |"
    )
    print(
        f"\nfloor of the Lovász kernels / measured cross-entropy: {total_floor / ce_ms:.2f}×; "
        f"measured kernels / cross-entropy: {total / ce_ms:.2f}×"
    )
    tee.stop()
    if args.out:
        title = f"Where the time goes: the binned Lovász-Softmax at {args.size} against this CPU's limits"
        write(args.out, title, tee.text)


if __name__ == "__main__":
    main()
