"""CUDA benchmark: forward+backward time and memory of the Lovász losses against cross-entropy.

    PYTHONPATH=src python benchmarks/bench_cuda.py                     # every default size
    PYTHONPATH=src python benchmarks/bench_cuda.py --sizes 8x21x256x256 --rounds 10 --out results/

Sizes are B×C×H×W; ``C = 1`` is a binary problem (BCE-with-logits against the Lovász hinge), any other
``C`` multi-class (cross-entropy against Lovász-Softmax, exact and binned, and kornia's
``lovasz_softmax_loss`` when kornia is installed).

All methods of a size run in one process, on the same inputs.  After a warm-up (``--warmup`` calls each:
Triton compilation, cuDNN/cuBLAS choices), every round times one forward+backward of each method with
CUDA events, the order of the methods rotated by one each round so that no method always follows the
same one; the table gives the median over ``--rounds`` rounds and its ratio to cross-entropy (or BCE)
measured in the same run.  Memory comes from one more call per method, above what the inputs take:
"held fwd→bwd" is ``memory_allocated`` after forward minus before (what the autograd graph keeps until
backward, on top of a network's activations); "peak extra" is ``max_memory_allocated`` over forward and
backward minus the same base (the gradient w.r.t. the logits included).

The table goes to stdout and, with a JSON of every measurement, to ``--out`` (``bench_cuda.md``,
``bench_cuda.json``).  A method that raises is reported in its row, and the script then exits with 1.
Without CUDA it exits with 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import lovasz
except ImportError:  # run from a checkout without PYTHONPATH=src or an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import lovasz

DEVICE = "cuda"  # a module constant, so that a harness can exercise the script's logic elsewhere
DEFAULT_SIZES = ["8x21x256x256", "2x19x512x1024", "4x150x128x128", "16x1x256x256"]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def multiclass_methods() -> list[tuple[str, str, Loss | str]]:
    """``(key, label, loss or a reason it is unavailable)``; the first is the baseline."""
    bins = lovasz.DEFAULT_BINS
    methods: list[tuple[str, str, Loss | str]] = [
        ("ce", "cross-entropy (F.cross_entropy)", F.cross_entropy),
        ("exact", "lovasz exact, batch", lambda x, t: lovasz.lovasz_softmax(x, t)),
        (
            "exact_pi",
            "lovasz exact, per image, classes='all'",
            lambda x, t: lovasz.lovasz_softmax(x, t, per_image=True, classes="all"),
        ),
        (
            "triton",
            "lovasz binned triton, batch",
            lambda x, t: lovasz.lovasz_softmax(x, t, bins=bins, backend="triton"),
        ),
        (
            "triton_pi",
            "lovasz binned triton, per image, classes='all'",
            lambda x, t: lovasz.lovasz_softmax(x, t, per_image=True, classes="all", bins=bins, backend="triton"),
        ),
        (
            "torch",
            "lovasz binned torch, batch",
            lambda x, t: lovasz.lovasz_softmax(x, t, bins=bins, backend="torch"),
        ),
    ]
    try:
        from kornia.losses import lovasz_softmax_loss
    except Exception as exc:  # ImportError, or a kornia that fails to import
        kornia: Loss | str = f"kornia not importable ({type(exc).__name__}: {exc})"
    else:
        kornia = lovasz_softmax_loss
    methods.append(("kornia", "kornia.losses.lovasz_softmax_loss (per image, all classes)", kornia))
    return methods


def binary_methods() -> list[tuple[str, str, Loss | str]]:
    bins = lovasz.DEFAULT_BINS
    return [
        ("bce", "BCE with logits (float target made outside the timing)", F.binary_cross_entropy_with_logits),
        ("hinge_exact", "lovasz hinge exact, per image", lambda x, t: lovasz.lovasz_hinge(x, t)),
        (
            "hinge_triton",
            "lovasz hinge binned triton, per image",
            lambda x, t: lovasz.lovasz_hinge(x, t, bins=bins, backend="triton"),
        ),
        (
            "hinge_torch",
            "lovasz hinge binned torch, per image",
            lambda x, t: lovasz.lovasz_hinge(x, t, bins=bins, backend="torch"),
        ),
    ]


def parse_size(size: str) -> tuple[int, int, int, int]:
    parts = size.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size must be BxCxHxW with positive integers, got {size!r}")
    b, c, h, w = (int(p) for p in parts)
    return b, c, h, w


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 200 else text[:197] + "..."


def step(fn: Loss, logits: torch.Tensor, target: torch.Tensor) -> None:
    x = logits.detach().requires_grad_(True)
    fn(x, target).backward()


def time_once(fn: Loss, logits: torch.Tensor, target: torch.Tensor) -> float:
    """Milliseconds of one forward+backward, by CUDA events, the stream idle before and after."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    x = logits.detach().requires_grad_(True)
    torch.cuda.synchronize()
    start.record()
    fn(x, target).backward()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def memory_once(fn: Loss, logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """Bytes held by the graph between forward and backward, and the peak over both, above the base."""
    x = logits.detach().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = fn(x, target)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - base
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del loss, x
    return held, peak


def bench_size(size: str, rounds: int, warmup: int, seed: int) -> list[dict]:
    b, c, h, w = parse_size(size)
    dev = torch.device(DEVICE)
    g = torch.Generator(device=dev).manual_seed(seed)
    if c == 1:
        logits = torch.randn(b, 1, h, w, device=dev, generator=g) * 3
        target = torch.randint(0, 2, (b, h, w), device=dev, generator=g)
        methods = binary_methods()
    else:
        logits = torch.randn(b, c, h, w, device=dev, generator=g) * 3
        target = torch.randint(0, c, (b, h, w), device=dev, generator=g)
        methods = multiclass_methods()
    # BCE takes float targets shaped like the logits; they are made here, not in the timed call.
    targets = {"bce": target.unsqueeze(1).to(logits.dtype)}
    rows = {key: {"size": size, "method": key, "label": label, "times_ms": []} for key, label, _ in methods}
    live: dict[str, tuple[Loss, torch.Tensor]] = {}
    for key, _, fn in methods:
        if isinstance(fn, str):
            rows[key]["note"] = fn
            continue
        try:
            t = targets.get(key, target)
            for _ in range(warmup):
                step(fn, logits, t)
            torch.cuda.synchronize()
            live[key] = (fn, t)
        except Exception as exc:
            rows[key]["error"] = short_error(exc)
            traceback.print_exc()
            torch.cuda.empty_cache()
    order = list(live)
    for r in range(rounds):
        k = r % max(1, len(order))
        for key in order[k:] + order[:k]:
            if "error" in rows[key]:
                continue
            try:
                fn, t = live[key]
                rows[key]["times_ms"].append(time_once(fn, logits, t))
            except Exception as exc:
                rows[key]["error"] = short_error(exc)
                traceback.print_exc()
                torch.cuda.empty_cache()
    for key in order:
        if "error" in rows[key]:
            continue
        try:
            fn, t = live[key]
            held, peak = memory_once(fn, logits, t)
            rows[key]["held_bytes"], rows[key]["peak_bytes"] = held, peak
        except Exception as exc:
            rows[key]["error"] = short_error(exc)
            traceback.print_exc()
            torch.cuda.empty_cache()
    for row in rows.values():
        if row["times_ms"] and "error" not in row:
            row["median_ms"] = statistics.median(row["times_ms"])
    base = rows[methods[0][0]].get("median_ms")
    for row in rows.values():
        if base and "median_ms" in row:
            row["ratio"] = row["median_ms"] / base
    del logits, target, targets, live
    torch.cuda.empty_cache()
    return list(rows.values())


def table_row(row: dict) -> str:
    size, label = row["size"], row["label"]
    if "error" in row:
        return f"| {size} | {label} | ERROR: {row['error']} | | | |"
    if "median_ms" not in row:
        return f"| {size} | {label} | skipped: {row.get('note', 'not run')} | | | |"
    ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
    held = f"{max(row['held_bytes'], 0) / 2**20:.1f}" if "held_bytes" in row else "-"
    peak = f"{row['peak_bytes'] / 2**20:.1f}" if "peak_bytes" in row else "-"
    return f"| {size} | {label} | {row['median_ms']:.3f} | {ratio} | {held} | {peak} |"


TABLE_HEAD = [
    "| size B×C×H×W | method | median ms | × CE (× BCE) | held fwd→bwd MiB | peak extra MiB |",
    "|---|---|---:|---:|---:|---:|",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench_cuda.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxCxHxW; C=1 is binary (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds; the median is reported (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each method first (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=0, help="seconds; sizes not started by then are skipped (0: none)")
    p.add_argument("--out", default=".", help="directory for bench_cuda.md and bench_cuda.json (default: .)")
    args = p.parse_args(argv)
    for size in args.sizes:
        try:
            parse_size(size)
        except argparse.ArgumentTypeError as exc:
            p.error(str(exc))
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be at least 1 and --warmup at least 0")

    if not torch.cuda.is_available():
        print(
            f"bench_cuda.py: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "this benchmark needs an NVIDIA GPU. For the CPU, use benchmarks/bench_engine.py.",
            file=sys.stderr,
        )
        return 2

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"GPU: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); triton {triton_version}; "
        f"lovasz {lovasz.__version__}; python {platform.python_version()}; {date}\n"
        f"forward+backward, median of {args.rounds} interleaved rounds after {args.warmup} warm-up calls each; "
        "ratios against CE/BCE of the same run; memory above the inputs"
    )
    print(header + "\n", flush=True)
    lines = list(TABLE_HEAD)
    print("\n".join(lines), flush=True)
    results: list[dict] = []
    t0 = time.monotonic()
    for size in args.sizes:
        if args.budget and time.monotonic() - t0 > args.budget:
            row = {
                "size": size,
                "method": "-",
                "label": "(all methods)",
                "note": f"time budget {args.budget:g} s spent",
            }
            results.append(row)
            lines.append(table_row(row))
            print(lines[-1], flush=True)
            continue
        try:
            rows = bench_size(size, args.rounds, args.warmup, args.seed)
        except Exception as exc:  # e.g. out of memory making the inputs
            traceback.print_exc()
            rows = [{"size": size, "method": "-", "label": "(inputs)", "error": short_error(exc)}]
        for row in rows:
            results.append(row)
            lines.append(table_row(row))
            print(lines[-1], flush=True)
    errors = [r for r in results if "error" in r]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_cuda.md").write_text(header + "\n\n" + "\n".join(lines) + "\n")
    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "lovasz": lovasz.__version__,
        "date": date,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "seed": args.seed,
        "seconds": round(time.monotonic() - t0, 1),
        "results": results,
    }
    (out / "bench_cuda.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"\nwrote {out / 'bench_cuda.md'} and {out / 'bench_cuda.json'} ({meta['seconds']} s)")
    skipped = [r["size"] for r in results if r["method"] == "-" and "note" in r]
    if skipped:
        print(f"bench_cuda.py: note: not measured for the time budget: {' '.join(skipped)}", file=sys.stderr)
    if errors:
        print(f"bench_cuda.py: {len(errors)} row(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
