"""The ``lovasz`` command (also ``python -m lovasz.experiments``): ``train``, ``eval`` and ``demo``.

lovasz demo                      # CE pretraining, then CE / Lovász batch / Lovász per-image fine-tuning
lovasz train --loss ce+lovasz --per-image --init runs/ce/model.pt --out runs/ft
lovasz eval --checkpoint runs/ft/model.pt

Needs the ``[train]`` extra (pip install 'lovasz[train]').  The engine benchmark is
``python benchmarks/bench_engine.py`` in the repository.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import data as datasets

TRAIN_EXTRA = ("torchmetrics", "matplotlib", "mlxtend", "tqdm")
DEMO_VARIANTS = {
    "CE (continued)": dict(loss="ce"),
    "Lovász batch": dict(loss="lovasz", per_image=False),
    "Lovász per image": dict(loss="lovasz", per_image=True),
    "Lovász per image, all classes": dict(loss="lovasz", per_image=True, classes="all"),
}
METRICS = [
    ("miou_dataset", "dataset mIoU"),
    ("miou_image", "per-image mIoU"),
    ("miou_class_image", "class-over-images mIoU"),
    ("miou_image_worst", "worst-10% images mIoU"),
]


def _bins(value: str) -> int | None:
    return None if value in ("0", "exact", "none") else int(value)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=["digits", "fashion"], default="digits")
    p.add_argument("--loss", choices=["ce", "lovasz", "ce+lovasz"], default="ce")
    p.add_argument("--per-image", action="store_true", help="Lovász per image (default: over the batch)")
    p.add_argument("--classes", choices=["present", "all"], default="present", help="Lovász class selection")
    p.add_argument("--lovasz-weight", type=float, default=1.0, help="λ in ce + λ·lovasz")
    p.add_argument("--bins", type=_bins, default=4096, help="binned engine budget; 0 for the exact engine")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--equibatch", action="store_true", help="class-balanced batches (EquibatchSampler)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="checkpoint to fine-tune from")
    p.add_argument("--width", type=int, default=16, help="U-Net base width")
    p.add_argument("--train-size", type=int, default=1500, help="training canvases")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--no-progress", action="store_true")


def _config(args):
    from .train import TrainConfig

    return TrainConfig(
        data=args.data, loss=args.loss, per_image=args.per_image, classes=args.classes,
        lovasz_weight=args.lovasz_weight, bins=args.bins,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, equibatch=args.equibatch, seed=args.seed,
        init=args.init, width=args.width, train_size=args.train_size, threads=args.threads,
    )  # fmt: skip


def _print_scores(scores: dict, names: list[str]) -> None:
    for key, label in METRICS:
        print(f"  {label:26s} {scores[key]:.4f}")
    print("  per-class IoU: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, scores["per_class_iou"], strict=True)))


def cmd_train(args) -> None:
    from .train import train

    cfg = _config(args)
    print(f"training {cfg.loss}{' per image' if cfg.per_image else ''} on {cfg.data} → {args.out}")
    results = train(cfg, args.out, progress=not args.no_progress)
    print(f"test ({args.out}/results.json):")
    _print_scores(results["test"], datasets.class_names(cfg.data))


def cmd_eval(args) -> None:
    from .train import evaluate, load_model

    model, ckpt = load_model(args.checkpoint)
    cfg = ckpt["config"]
    name = args.data or cfg["data"]
    splits = datasets.load(name, sizes=(cfg["train_size"], *datasets.EVAL_SIZES), size=cfg["image_size"])
    scores = evaluate(model, splits[args.split])
    print(f"{args.checkpoint} on {name} / {args.split}:")
    _print_scores(scores, datasets.class_names(name))
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2))


def _mean_std(values: list[float], sign: str = "") -> str:
    if len(values) == 1:
        return f"{values[0]:{sign}.4f}"
    return f"{statistics.mean(values):{sign}.4f} ± {statistics.stdev(values):.4f}"


def cmd_demo(args) -> None:
    from . import plots
    from .train import TrainConfig, load_model, predict, train

    out = Path(args.out)
    pre_epochs, ft_epochs = args.pretrain_epochs, args.finetune_epochs
    if args.long:
        pre_epochs, ft_epochs = 2 * pre_epochs, 2 * ft_epochs
    names = datasets.class_names(args.data)
    base = TrainConfig(
        data=args.data, bins=args.bins, width=args.width, train_size=args.train_size, threads=args.threads,
    )  # fmt: skip
    splits = datasets.load(args.data, sizes=(args.train_size, *datasets.EVAL_SIZES), size=base.image_size)
    print(
        f"lovasz demo on {args.data} canvases (train {len(splits['train'])}, val {len(splits['val'])}, "
        f"test {len(splits['test'])}): one cross-entropy checkpoint ({pre_epochs} epochs, lr {args.lr}), then "
        f"{args.seeds} seeds × fine-tuning from it for {ft_epochs} epochs (lr {args.finetune_lr}) with each loss; "
        f"Lovász bins={args.bins}\n"
    )
    t0 = time.time()
    print("pretraining with cross-entropy")
    pre = train(replace(base, epochs=pre_epochs, lr=args.lr), out / "pretrain", splits, not args.no_progress)
    results: dict[str, list[dict]] = {"CE pretrained": [pre["test"]], **{k: [] for k in DEMO_VARIANTS}}
    histories: dict[str, list] = {}
    models = {}
    for seed in range(args.seeds):
        for name, change in DEMO_VARIANTS.items():
            print(f"seed {seed}: fine-tuning, {name}")
            cfg = replace(
                base, seed=seed, epochs=ft_epochs, lr=args.finetune_lr, init=str(out / "pretrain" / "model.pt"),
                **change,
            )  # fmt: skip
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("á", "a")).strip("-")
            res = train(cfg, out / f"seed{seed}" / slug, splits, not args.no_progress)
            results[name].append(res["test"])
            if seed == 0:
                histories[name] = res["config"]["history"]
                models[name] = load_model(out / f"seed{seed}" / slug / "model.pt")[0]
    elapsed = time.time() - t0

    lines = [
        f"Test split of `{args.data}`; fine-tuned rows: mean ± std over {args.seeds} seeds; {elapsed / 60:.1f} min.",
        "",
        "| model | " + " | ".join(label for _, label in METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, runs in results.items():
        cells = [_mean_std([r[key] for r in runs]) for key, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed (same checkpoint, same batches), difference to CE (continued):", ""]
    lines += ["| model | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for name in list(DEMO_VARIANTS)[1:]:
        cells = []
        for key, _ in METRICS:
            diffs = [a[key] - b[key] for a, b in zip(results[name], results["CE (continued)"], strict=True)]
            cells.append(_mean_std(diffs, sign="+"))
        lines.append(f"| {name} − CE | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"elapsed_s": elapsed, "args": vars(args), "test": results}, indent=2))
    histories = {"CE pretraining": pre["config"]["history"], **histories}
    plots.training_curves(histories, out / "curves.png", f"CE pretraining, then fine-tuning (seed 0, {args.data})")
    mean_per_class = {
        name: [statistics.fmean(r["per_class_iou"][c] for r in runs) for c in range(datasets.NUM_CLASSES)]
        for name, runs in results.items()
    }
    plots.per_class_bars(mean_per_class, names, out / "per_class_iou.png", f"test IoU per class ({args.data})")
    test = splits["test"]
    preds = {name: predict(m, test.images[:4]) for name, m in models.items()}
    plots.predictions(test.images[:4], test.masks[:4], preds, out / "predictions.png", datasets.NUM_CLASSES)
    print(f"\nwrote {out}/table.md, results.json, curves.png, per_class_iou.png, predictions.png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lovasz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model")
    _add_train_args(t)
    t.add_argument("--out", default="runs/train")
    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", choices=["digits", "fashion"], help="default: the checkpoint's")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--json", help="also write the scores to this file")
    d = sub.add_parser("demo", help="CE pretraining, then CE / Lovász fine-tuning, several seeds")
    d.add_argument("--data", choices=["digits", "fashion"], default="digits")
    d.add_argument("--seeds", type=int, default=3)
    d.add_argument("--pretrain-epochs", type=int, default=16)
    d.add_argument("--finetune-epochs", type=int, default=4)
    d.add_argument("--lr", type=float, default=3e-3, help="pretraining learning rate")
    d.add_argument("--finetune-lr", type=float, default=5e-4)
    d.add_argument("--bins", type=_bins, default=4096, help="binned engine budget; 0 for the exact engine")
    d.add_argument("--width", type=int, default=16)
    d.add_argument("--train-size", type=int, default=1500)
    d.add_argument("--threads", type=int)
    d.add_argument("--long", action="store_true", help="twice the epochs")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo}[args.command](args)
    except ModuleNotFoundError as exc:
        if exc.name in TRAIN_EXTRA:
            sys.exit(f"lovasz {args.command}: {exc.name} is missing; install the extra: pip install 'lovasz[train]'")
        raise


if __name__ == "__main__":
    main()
