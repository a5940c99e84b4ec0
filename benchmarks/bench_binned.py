"""The binned engine against cross-entropy, measured fairly: one process, every method interleaved, after
warm-up, medians; eager and ``torch.compile`` (default backend); with glibc's default allocator (fresh
pages: every allocation above 32 MB is mapped afresh and page-faults) and with a warm allocator
(``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` raised: buffers are reused, as GPU caching
allocators do).  Each allocator setting runs in its own child process, because glibc reads it at start.

    python benchmarks/bench_binned.py                      # both allocators, all sizes, CPU
    python benchmarks/bench_binned.py --allocator warm --sizes 8x21x256x256 --rounds 5
    python benchmarks/bench_binned.py --labels regions     # labels with a few classes per image
    python benchmarks/bench_binned.py --out benchmarks/results/binned-uniform.md   # also write the tables

Labels: ``uniform`` (the default) draws every pixel's class uniformly, so every class occurs in every
image: the worst case, where every (image, class) group must be computed; the per-image rows use
``classes="all"``.  ``regions`` gives each image a few classes, as real datasets do (3 of 21 as in Pascal
VOC, 12 of 19 as in Cityscapes, 10 of 150 as in ADE20K), in blocks of an 8×8 grid; the rows use the
default ``classes="present"``, so the classes absent from an image (per image) or from the batch are left
out where the kernels can (the native ones).

"held fwd→bwd" is what the autograd graph saves for backward beyond the inputs themselves (counted
through ``torch.autograd.graph.saved_tensors_hooks``, each storage once): what a loss adds to the
activations a network keeps.  Times are forward+backward, in milliseconds.  "compiled vs eager" is a
``torch.compile`` row against the same method eager: the two run next to each other in every round (in
alternating order), and the column gives the median of the per-round ratios with a distribution-free 95 %
interval for that median.  Every size runs ``--rounds`` rounds, or more where those would take less than
``--min-seconds`` (10 s by default: the binary size, whose calls take a few milliseconds, gets over a hundred rounds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

WARM_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
SIZES = ["8x21x256x256", "2x19x512x1024", "4x150x128x128", "16x1x256x256"]
CLASSES_PER_IMAGE = {21: 3, 19: 12, 150: 10}  # with --labels regions (Pascal VOC, Cityscapes, ADE20K)
COMPILED = ", torch.compile"  # the suffix of a compiled method's name


def region_labels(b: int, c: int, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """``[b, h, w]`` labels: each image has ``CLASSES_PER_IMAGE[c]`` classes (a random choice; 3 where the
    table has no entry), spread over the blocks of an 8×8 grid."""
    k = min(c, CLASSES_PER_IMAGE.get(c, 3))
    out = torch.empty(b, h, w, dtype=torch.int64)
    for i in range(b):
        chosen = torch.randperm(c, generator=g)[:k]
        blocks = chosen[torch.randint(0, k, (1, 1, 8, 8), generator=g)].float()
        out[i] = F.interpolate(blocks, size=(h, w), mode="nearest")[0, 0].long()
    return out


def methods(binary: bool, per_image_classes: str = "all") -> dict[str, Callable]:
    import lovasz

    bins = lovasz.DEFAULT_BINS
    if binary:
        return {
            "BCE (F.binary_cross_entropy_with_logits)": lambda x, t, tf: F.binary_cross_entropy_with_logits(x, tf),
            "lovasz_hinge binned, per image": lambda x, t, tf: lovasz.lovasz_hinge(x, t, bins=bins),
            "lovasz_hinge binned, batch": lambda x, t, tf: lovasz.lovasz_hinge(x, t, bins=bins, per_image=False),
            "lovasz_sigmoid binned, batch": lambda x, t, tf: lovasz.lovasz_sigmoid(x, t, bins=bins),
        }
    rows = {
        "CE (F.cross_entropy)": lambda x, t, tf: F.cross_entropy(x, t),
        "lovasz_softmax binned, batch": lambda x, t, tf: lovasz.lovasz_softmax(x, t, bins=bins),
        "lovasz_softmax binned, per image": lambda x, t, tf: lovasz.lovasz_softmax(
            x, t, bins=bins, per_image=True, classes=per_image_classes
        ),
    }
    from lovasz.engine import backends

    if backends.resolve("auto", torch.empty(1, 2, 1), bins).name == "native":
        # The native kernels' other backward (kept errors or recomputed probabilities: the same result).
        from lovasz.engine import config

        other = "0" if config.settings().keep_errors else "1"
        for name in ("lovasz_softmax binned, batch", "lovasz_softmax binned, per image"):
            rows[f"{name}, LOVASZ_KEEP_ERRORS={other}"] = _keeping(rows[name], other)
    return rows


def _keeping(fn: Callable, value: str) -> Callable:
    """``fn`` with ``LOVASZ_KEEP_ERRORS=value`` while its forward runs (where the kernels decide what to
    keep for backward)."""

    from lovasz.engine import config

    def call(x, t, tf):
        os.environ["LOVASZ_KEEP_ERRORS"] = value
        config.reload()  # lovasz reads its environment variables once
        try:
            return fn(x, t, tf)
        finally:
            os.environ.pop("LOVASZ_KEEP_ERRORS", None)
            config.reload()

    return call


def warm_child(script: str, args: list[str]) -> list[dict]:
    """Run ``script --child ARGS`` in a child process with the warm allocator (:data:`WARM_ENV`); the
    ``rows`` that its last line prints as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args], env=dict(os.environ, **WARM_ENV), capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit(f"the benchmark's child process failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])["rows"]


def held_bytes(fn: Callable, *inputs: torch.Tensor) -> int:
    """What the autograd graph of ``fn(*inputs)`` keeps between forward and backward beyond the inputs
    (each storage once)."""
    known = {v.untyped_storage().data_ptr() for v in inputs}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in known:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = fn(*inputs)
    loss.backward()
    return sum(seen.values())


def names_of(groups: list[list[str]]) -> list[str]:
    return [name for group in groups for name in group]


def median_interval(n: int) -> tuple[int, int]:
    """Indices, in ``n`` sorted values, of a distribution-free interval for their median with at least 95 %
    coverage: the order statistics of ranks ``k`` and ``n + 1 - k``, with the largest ``k`` whose binomial
    tail ``P(Binomial(n, 1/2) < k)`` is at most 2.5 % (the whole range when even ``k = 1`` is not)."""
    tail, k = 0.0, 0
    while k < n and tail + math.comb(n, k) / 2**n <= 0.025:
        tail += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return k - 1, n - k


def run(
    sizes: list[str], rounds: int, compile_too: bool, labels: str = "uniform", min_seconds: float = 0.0
) -> list[dict]:
    rows = []
    for size in sizes:
        b, c, h, w = (int(v) for v in size.split("x"))
        binary = c == 1
        if binary and labels == "regions":
            continue  # the binary losses have one class: nothing to leave out
        g = torch.Generator().manual_seed(0)
        shape = (b, h, w) if binary else (b, c, h, w)
        logits = torch.randn(shape, generator=g) * 3
        if labels == "regions":
            target = region_labels(b, c, h, w, g)
        else:
            target = torch.randint(0, 2 if binary else c, (b, h, w), generator=g)
        target_f = target.float()
        fns = methods(binary, "present" if labels == "regions" else "all")
        if compile_too:
            for name in [n for n in fns if "lovasz" in n and "KEEP_ERRORS" not in n]:
                fns[name + COMPILED] = torch.compile(fns[name])
        times: dict[str, list[float]] = {name: [] for name in fns}

        def step(fn: Callable, logits=logits, target=target, target_f=target_f) -> float:
            x = logits.detach().requires_grad_(True)
            t0 = time.perf_counter()
            fn(x, target, target_f).backward()
            return time.perf_counter() - t0

        for fn in fns.values():  # warm-up (compilation, caches)
            step(fn)
            step(fn)
        # Each compiled method runs next to its eager twin (in alternating order), so the compiled-vs-eager
        # ratio is taken within a round, where the machine's phase is the same for both.
        groups = [
            [name] + ([name + COMPILED] if name + COMPILED in fns else []) for name in fns if COMPILED not in name
        ]
        round_s = sum(step(fns[name]) for group in groups for name in group)
        n_rounds = max(rounds, math.ceil(min_seconds / round_s))  # cheap sizes get more rounds
        for r in range(n_rounds):
            order = groups[r % len(groups) :] + groups[: r % len(groups)]  # rotate the order every round
            for group in order:
                for name in group if r % 2 == 0 else group[::-1]:
                    times[name].append(step(fns[name]))
        base = statistics.median(times[names_of(groups)[0]])
        for name in names_of(groups):
            med = statistics.median(times[name])
            held = held_bytes(fns[name], logits.detach().requires_grad_(True), target, target_f)
            row = dict(size=size, method=name, ms=1000 * med, ratio=med / base, held_mib=held / 2**20, rounds=n_rounds)
            eager = name.removesuffix(COMPILED)
            if eager != name:  # the compiled call against the same call eager, paired within each round
                paired = sorted(c / e - 1 for c, e in zip(times[name], times[eager], strict=True))
                lo, hi = median_interval(len(paired))
                row.update(vs_eager=statistics.median(paired), vs_eager_lo=paired[lo], vs_eager_hi=paired[hi])
            rows.append(row)
    return rows


def table(rows: list[dict], allocator: str, labels: str = "uniform") -> str:
    what = (
        "uniform (every class in every image; per image with classes='all')"
        if labels == "uniform"
        else "regions (3 of 21, 12 of 19, 10 of 150 classes per image; classes='present')"
    )
    lines = [
        f"labels: {what}; allocator: {allocator}; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| size | method | fwd+bwd ms (median) | × CE/BCE | compiled vs eager [95 %] | held fwd→bwd MiB | rounds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs = ""
        if "vs_eager" in r:
            vs = f"{100 * r['vs_eager']:+.1f} % [{100 * r['vs_eager_lo']:+.1f}, {100 * r['vs_eager_hi']:+.1f}]"
        cells = [r["size"], r["method"], f"{r['ms']:.1f}", f"{r['ratio']:.2f}", vs, f"{r['held_mib']:.1f}", r["rounds"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=SIZES, help="BxCxHxW; C=1 means a binary loss")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (each method once per round), at least")
    p.add_argument(
        "--min-seconds",
        type=float,
        default=10.0,
        help="more rounds where fewer would take less than this many seconds per size (the cheap sizes)",
    )
    p.add_argument("--allocator", choices=["both", "warm", "fresh"], default="both")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--labels", choices=["uniform", "regions"], default="uniform", help="see the module docstring")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", choices=["warm", "fresh"], help=argparse.SUPPRESS)
    from _report import add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    add_out_argument(p, "binned-uniform or binned-regions")
    args = p.parse_args()
    if args.child:
        rows = run(args.sizes, args.rounds, not args.no_compile, args.labels, args.min_seconds)
        print(json.dumps(rows))
        return
    results, tables = {}, []
    for allocator in ["fresh", "warm"] if args.allocator == "both" else [args.allocator]:
        env = dict(os.environ, **(WARM_ENV if allocator == "warm" else {}))
        if allocator == "fresh":
            for key in WARM_ENV:
                env.pop(key, None)
        cmd = [sys.executable, __file__, "--child", allocator, "--rounds", str(args.rounds), "--labels", args.labels]
        cmd += ["--min-seconds", str(args.min_seconds)]
        cmd += ["--sizes", *args.sizes]
        if args.no_compile:
            cmd.append("--no-compile")
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            sys.exit(f"the {allocator}-allocator run failed (exit {out.returncode})")
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        results[allocator] = rows
        label = "warm (buffers reused, no page faults)" if allocator == "warm" else "fresh (glibc default)"
        tables.append(table(rows, label, args.labels))
        print(tables[-1] + "\n", flush=True)
    if args.out:
        write(
            args.out,
            f"Binned Lovász losses against cross-entropy, {args.labels} labels",
            "\n\n".join(tables),
            "forward+backward medians, every method interleaved in one process",
            alloc="stated above each table (each allocator runs in its own child process)",
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
