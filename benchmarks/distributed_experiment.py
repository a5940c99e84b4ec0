"""Per-rank vs global-batch Lovász loss with small per-process batches (issue: the loss of the global batch).

    bash benchmarks/distributed_experiment.sh      # runs the 6 trainings, then this script prints the table
    python benchmarks/distributed_experiment.py [runs/dist] --out benchmarks/results/distributed_experiment.md

For each seed s, a model pretrained with cross-entropy from scratch with seed s for 8 epochs on the
``digits`` canvases (``runs/dist/pre<s>/model.pt``, written by the shell script) is fine-tuned with Lovász-Softmax
over the batch under ``torchrun --nproc-per-node 4``, 2 canvases per process (a global batch of 8), once
with each rank's own loss (``--lovasz-sync local``) and once with the loss of the global batch
(``--lovasz-sync global``), same seed, same batches.  Test split metrics, paired by seed, with 95 %
Student-t intervals.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from lovasz.experiments.demo import _finding, paired_interval

METRICS = [
    ("miou_dataset", "dataset mIoU"),
    ("miou_image", "per-image mIoU"),
    ("miou_class_image", "class-over-images mIoU"),
    ("miou_image_worst", "worst-10% images mIoU"),
]


def main(root: str = "runs/dist", seeds: int = 3, out: str | None = None) -> None:
    from _report import Tee, write  # benchmarks/ is on sys.path when run as a script

    runs = {
        sync: [json.loads((Path(root) / f"seed{s}-{sync}" / "results.json").read_text())["test"] for s in range(seeds)]
        for sync in ("local", "global")
    }
    tee = Tee().start()
    print(f"4 processes × 2 canvases (global batch 8), {seeds} seeds, test split of `digits`\n")
    print("| Lovász batch loss | " + " | ".join(label for _, label in METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for sync, rows in runs.items():
        cells = [
            f"{statistics.mean(r[k] for r in rows):.4f} ± {statistics.stdev(r[k] for r in rows):.4f}"
            for k, _ in METRICS
        ]
        print(
            f"| {sync} (per rank)" if sync == "local" else f"| {sync} (process_group)", "| " + " | ".join(cells) + " |"
        )
    print("\nglobal − local, paired by seed: mean [95 % interval]; a finding only where the interval excludes 0\n")
    print("| metric | mean | 95 % interval | finding |")
    print("|---|---:|---|---|")
    for key, label in METRICS:
        diffs = [g[key] - loc[key] for g, loc in zip(runs["global"], runs["local"], strict=True)]
        mean, lo, hi = paired_interval(diffs)
        finding = _finding(lo, hi)
        interval = "—" if lo is None else f"[{lo:+.4f}, {hi:+.4f}]"
        print(f"| {label} | {mean:+.4f} | {interval} | {finding} |")
    tee.stop()
    if out:
        write(out, "Per-rank against global-batch Lovász loss, 4 processes", tee.text)


if __name__ == "__main__":
    from _report import add_out_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="runs/dist", help="folder of the six runs")
    add_out_argument(parser, "distributed_experiment")
    args = parser.parse_args()
    main(args.root, out=args.out)
