"""First binned call in a fresh process, for each CPU backend: the native kernels (compiled when the
package was installed: nothing to compile or cache at run time) and the PyTorch engine, each with an empty
cache folder (cold) and with the same folder again (warm).

    python benchmarks/bench_cold_start.py
    python benchmarks/bench_cold_start.py --out benchmarks/results/cold_start.md

Each measurement is a new Python process with ``LOVASZ_CACHE`` pointing at a fresh temporary folder (cold),
then at the same folder again (warm), and ``LOVASZ_BACKEND`` naming the backend; it prints the import time
and the time of the first forward+backward of ``lovasz_softmax`` and ``lovasz_hinge`` with
``bins=DEFAULT_BINS`` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch, lovasz
t1 = time.perf_counter()
x = torch.randn(2, 5, 32, 32, requires_grad=True)
t = torch.randint(0, 5, (2, 32, 32))
lovasz.lovasz_softmax(x, t, bins=lovasz.DEFAULT_BINS).backward()
t2 = time.perf_counter()
lovasz.lovasz_hinge(x[:, 0], (t == 1).long(), bins=lovasz.DEFAULT_BINS).backward()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "softmax": t2 - t1, "hinge": t3 - t2}))
"""


def run(cache: str, backend: str) -> dict:
    env = dict(os.environ, LOVASZ_CACHE=cache, LOVASZ_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from _report import Tee, add_out_argument, write  # benchmarks/ is on sys.path when run as a script

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(p, "cold_start")
    args = p.parse_args()
    rows = {}
    for backend in [name for name in ("native", "torch") if _available(name)]:
        with tempfile.TemporaryDirectory() as cache:
            rows[f"{backend}, cold (empty cache)"] = run(cache, backend)
            rows[f"{backend}, warm (same cache folder)"] = run(cache, backend)
    tee = Tee().start()
    print("| backend, process | import lovasz (s) | first softmax call (s) | then first hinge call (s) |")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['import']:.2f} | {r['softmax']:.2f} | {r['hinge']:.2f} |")
    tee.stop()
    if args.out:
        write(args.out, "First binned call in a fresh process", tee.text, "each row a new Python process")


def _available(name: str) -> bool:
    from lovasz.engine import registry

    return not registry.REGISTRY[name].missing()


if __name__ == "__main__":
    main()
