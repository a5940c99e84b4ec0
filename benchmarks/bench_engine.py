"""Forward+backward time and peak memory of Lovász-Softmax implementations vs. cross-entropy.

    python benchmarks/bench_engine.py                 # CPU, both default sizes
    python benchmarks/bench_engine.py --device cuda   # on a GPU
    python benchmarks/bench_engine.py --sizes 8x21x256x256 --repeats 5
    python benchmarks/bench_engine.py --repeats 7 --out benchmarks/results/engine.md

Each (method, size) runs in a fresh subprocess, so that its memory is its own: on CUDA the allocator's
counters, on CPU the process's resident set (``VmRSS``, and the high-water mark ``VmHWM`` reset through
``/proc/self/clear_refs`` after the inputs are made).  "held fwd→bwd" is what the autograd graph keeps
from the end of forward until backward (added to every network's activations); "peak extra" is the peak
over forward and backward above what the inputs took (the gradient w.r.t. the logits included).
Times are medians of ``--repeats`` timed runs after one warm-up run.  Ratios are against
cross-entropy measured in the same run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

METHODS: dict[str, str] = {
    "ce": "cross-entropy (F.cross_entropy)",
    "exact": "lovasz exact, batch (per_image=False)",
    "exact_pi": "lovasz exact, per image, classes='all'",
    "fast": "lovasz binned, batch (bins=default)",
    "fast_pi": "lovasz binned, per image, classes='all'",
    "naive": "naive per-class loop (Algorithm 1), batch",
    "kornia": "kornia.losses.lovasz_softmax_loss (per image, all classes)",
}


def naive_lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Berman et al., one class at a time, over the whole batch ('present' classes)."""
    probs = logits.softmax(1)
    c = probs.shape[1]
    probs = probs.transpose(0, 1).reshape(c, -1)
    labels = target.reshape(-1)
    losses = []
    for k in range(c):
        fg = (labels == k).float()
        if fg.sum() == 0:
            continue
        errors = (fg - probs[k]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1 - intersection / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def make_loss(method: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    import lovasz

    if method == "ce":
        return F.cross_entropy
    if method == "exact":
        return lambda x, t: lovasz.lovasz_softmax(x, t)
    if method == "exact_pi":
        return lambda x, t: lovasz.lovasz_softmax(x, t, per_image=True, classes="all")
    if method == "fast":
        return lambda x, t: lovasz.lovasz_softmax(x, t, bins=lovasz.DEFAULT_BINS)
    if method == "fast_pi":
        return lambda x, t: lovasz.lovasz_softmax(x, t, per_image=True, classes="all", bins=lovasz.DEFAULT_BINS)
    if method == "naive":
        return naive_lovasz_softmax
    if method == "kornia":
        from kornia.losses import lovasz_softmax_loss

        return lovasz_softmax_loss
    raise ValueError(method)


def _rss_peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def child(method: str, size: str, device: str, repeats: int, what: str) -> dict:
    b, c, h, w = (int(v) for v in size.split("x"))
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(b, c, h, w, generator=g) * 3).to(device)
    target = torch.randint(0, c, (b, h, w), generator=g).to(device)
    try:
        loss_fn = make_loss(method)
    except ImportError as exc:
        return {"error": f"not installed: {exc}"}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        x = logits.detach().requires_grad_(True)
        loss_fn(x, target).backward()
        sync()

    step()  # warm-up (and compilation of fused kernels)
    if what == "time":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return {"ms": 1000 * statistics.median(times)}
    # Memory of one more step, above what the inputs already take: held by the graph between forward and
    # backward (what the loss adds to a network's activations), and the peak over forward + backward.
    x = logits.detach().requires_grad_(True)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = loss_fn(x, target)
        held = torch.cuda.memory_allocated() - base
        loss.backward()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_kib()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        loss = loss_fn(x, target)
        held = (_rss_kib() - base) * 1024
        loss.backward()
        peak = (_rss_peak_kib() - base) * 1024
    return {"peak": peak, "held": held}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="bench_engine.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", default=["8x21x256x256", "2x19x512x1024"], help="BxCxHxW")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "SIZE", "WHAT"), help=argparse.SUPPRESS)
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "engine")
    args = p.parse_args(argv)
    for size in args.sizes:
        parts = size.split("x")
        if len(parts) != 4 or not all(v.isdigit() and int(v) > 0 for v in parts):
            p.error(f"--sizes takes BxCxHxW with positive integers, e.g. 8x21x256x256; got {size!r}")
    if args.child:
        print(json.dumps(child(*args.child[:2], args.device, args.repeats, args.child[2])))
        return
    if "ce" not in args.methods:
        args.methods.insert(0, "ce")
    # For the memory run only, a fixed mmap threshold makes glibc return large blocks to the OS when freed,
    # so that the resident set tracks live memory (the default, dynamic threshold keeps freed blocks and
    # inflates every number).  It slows allocation down, so the timing run goes without it.
    envs = {"time": dict(os.environ), "memory": dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")}
    hw = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    tee = Tee().start()
    print(f"device: {args.device} ({hw}); torch {torch.__version__}; median of {args.repeats} runs, forward+backward\n")
    print("| size B×C×H×W | method | time (ms) | × CE time | held fwd→bwd (MiB) | peak extra (MiB) | × CE peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results = []
    for size in args.sizes:
        ce = None
        for method in args.methods:
            r = {"method": method, "size": size}
            for what in ("time", "memory"):
                command = [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--repeats",
                    str(args.repeats),
                ]
                out = subprocess.run(
                    [*command, "--child", method, size, what], capture_output=True, text=True, env=envs[what]
                )
                if out.returncode != 0:
                    err = out.stderr.strip().splitlines()
                    r["error"] = err[-1] if err else f"exit {out.returncode}"
                    break
                r.update(json.loads(out.stdout.strip().splitlines()[-1]))
            results.append(r)
            if "error" in r:
                print(f"| {size} | {METHODS[method]} | {r['error']} | | | | |")
                continue
            if method == "ce":
                ce = r
            tr = f"{r['ms'] / ce['ms']:.2f}" if ce else "-"
            mr = f"{r['peak'] / ce['peak']:.2f}" if ce and ce["peak"] > 0 else "-"
            print(
                f"| {size} | {METHODS[method]} | {r['ms']:.1f} | {tr} | {max(r['held'], 0) / 2**20:.0f} "
                f"| {r['peak'] / 2**20:.0f} | {mr} |",
                flush=True,
            )
    tee.stop()
    if args.out:
        write(
            args.out,
            "Lovász-Softmax engines against cross-entropy: time and memory",
            tee.text,
            "each (method, size) in its own process; timing with the inherited allocator, memory with "
            "MALLOC_MMAP_THRESHOLD_=131072",
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "hardware": hw, "results": results}, f, indent=2)
    failed = [r for r in results if "error" in r and not r["error"].startswith("not installed")]
    if failed:
        rows = "; ".join(f"{r['method']} {r['size']}: {r['error']}" for r in failed)
        sys.exit(f"{len(failed)} row(s) failed: {rows}")


if __name__ == "__main__":
    main()
