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
import math
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from .. import __version__
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown in the help (not the empty ones: ``None``, off flags), descriptions kept as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Errors in one line (``lovasz train: error: ...``), without the long usage block before them."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _number(value: str, kind: type, what: str, ok) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not ok(number):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return number


def _positive_int(value: str) -> int:
    return _number(value, int, "a positive integer", lambda n: n > 0)


def _non_negative_int(value: str) -> int:
    return _number(value, int, "an integer >= 0", lambda n: n >= 0)


def _positive_float(value: str) -> float:
    return _number(value, float, "a number > 0", lambda x: math.isfinite(x) and x > 0)


def _non_negative_float(value: str) -> float:
    return _number(value, float, "a number >= 0", lambda x: math.isfinite(x) and x >= 0)


def _bins(value: str) -> int:
    """Binned-engine budget (>= 64), or 0 / ``exact`` / ``none`` for the exact engine (returned as 0; 0 and
    "not given" (``None``) differ until :func:`_finish_args` turns 0 into ``None``)."""
    if value.lower() in ("0", "exact", "none"):
        return 0
    return _number(value, int, "a number of bins >= 64, or 0 for the exact engine", lambda n: n >= 64)


def _checkpoint(value: str) -> str:
    """An existing file that ``torch.load(weights_only=True)`` reads as a lovasz checkpoint."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}" if not path.exists() else f"not a file: {value}")
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise argparse.ArgumentTypeError(
            f"{value} is not a lovasz checkpoint: it holds Python objects that torch.load(weights_only=True) refuses"
        ) from None
    except Exception:  # any other failure to read it: not a PyTorch file, truncated, ...
        raise argparse.ArgumentTypeError(f"{value} is not a lovasz checkpoint (not a readable PyTorch file)") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= ckpt.keys():
        raise argparse.ArgumentTypeError(f"{value} is not a lovasz checkpoint (no 'model' and 'config' entries)")
    return value


# Options of `lovasz train` that apply to some losses only; they default to None ("not given") so that
# _finish_args can refuse them where they do not apply, then fill in the real defaults.
_LOVASZ_OPTIONS = {"per_image": "--per-image", "classes": "--classes", "bins": "--bins"}
_WEIGHT_OPTIONS = {"lovasz_weight": "--lovasz-weight"}


def _unset_defaults(parser: argparse.ArgumentParser, dests) -> dict:
    """Make the options ``dests`` default to ``None``; return their real defaults (still shown in the help)."""
    real = {}
    for action in parser._actions:
        if action.dest in dests:
            real[action.dest] = action.default
            if action.default not in (None, False):
                action.help = f"{action.help or ''} (default: {action.default})".strip()
            action.default = None
    return real


def _finish_args(args) -> None:
    """Refuse options that do not apply, in one line (exit code 2); fill in the defaults; bins 0 → None."""

    def refuse(message: str) -> None:
        sys.stderr.write(f"lovasz {args.command}: error: {message}\n")
        sys.exit(2)

    real = getattr(args, "unset_defaults", None)
    if real is not None:
        del args.unset_defaults
        loss = args.loss
        given = [flag for dest, flag in _LOVASZ_OPTIONS.items() if getattr(args, dest) is not None]
        if loss == "ce" and given:
            refuse(f"{', '.join(given)} configure the Lovász loss; they do not apply to --loss ce")
        if loss != "ce+lovasz" and args.lovasz_weight is not None:
            refuse(f"--lovasz-weight is λ in ce + λ·lovasz; it does not apply to --loss {loss}")
        for dest, default in real.items():
            if getattr(args, dest) is None:
                setattr(args, dest, default)
    if hasattr(args, "bins"):
        args.bins = args.bins or None  # 0: the exact engine


def _add_train_args(p: argparse.ArgumentParser) -> None:
    class CheckDevice(argparse.Action):  # --device / --amp: refuse, in one line, what this machine cannot run
        def __call__(self, parser, namespace, values, option_string=None):
            setattr(namespace, self.dest, values)
            from .train import resolve_device

            try:
                resolve_device(namespace.device, namespace.amp)
            except ValueError as exc:
                parser.exit(2, f"{parser.prog}: error: {exc}\n")

    def model_spec(value: str) -> str:
        from .models import parse_model_spec

        try:
            parse_model_spec(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    p.add_argument(
        "--data", choices=["digits", "fashion", "voc", "cityscapes", "folder"], default="digits",
        help="built-in canvases (digits, fashion) or a data set on disk under --root",
    )  # fmt: skip
    p.add_argument(
        "--root", help="voc: VOCdevkit/VOC2012; cityscapes: the folder of leftImg8bit/ and gtFine/; "
        "folder: the folder of images/ and masks/ (same stems; masks: PNGs of class ids, 255 = void)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=_positive_int, help="number of classes of --data folder (required there)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="--data folder: share held out for validation")
    p.add_argument("--crop-size", type=_positive_int, default=512, help="training crop side (on-disk data)")
    p.add_argument(
        "--scale", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
        help="random scale range of the training augmentation (on-disk data)",
    )  # fmt: skip
    p.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader worker processes (on-disk data)")
    p.add_argument(
        "--model", type=model_spec, default="unet",
        help="unet (the small U-Net), deeplabv3_resnet50 or fcn_resnet50 (torchvision), smp:<Arch>:<encoder>",
    )  # fmt: skip
    p.add_argument("--weights", help="local state dict to initialise the model from (nothing is downloaded)")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", action=CheckDevice,
        help="auto: cuda if available",
    )  # fmt: skip
    p.add_argument(
        "--amp", choices=["none", "bf16", "fp16"], default="none", action=CheckDevice,
        help="autocast dtype (fp16: CUDA only, with a gradient scaler)",
    )  # fmt: skip
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last memory format")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--loss", choices=["ce", "lovasz", "ce+lovasz"], default="ce", help="training loss")
    p.add_argument("--per-image", action="store_true", help="Lovász per image (else over the batch)")
    p.add_argument("--classes", choices=["present", "all"], default="present", help="Lovász class selection")
    p.add_argument("--lovasz-weight", type=_non_negative_float, default=1.0, help="λ in ce + λ·lovasz")
    p.add_argument("--bins", type=_bins, default=4096, help="binned engine budget (>= 64); 0 for the exact engine")
    p.add_argument("--epochs", type=_positive_int, default=8, help="training epochs")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch")
    p.add_argument("--lr", type=_positive_float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    p.add_argument("--equibatch", action="store_true", help="class-balanced batches (EquibatchSampler)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the initialisation and the batches")
    p.add_argument("--init", type=_checkpoint, help="checkpoint to fine-tune from")
    p.add_argument("--width", type=_positive_int, default=16, help="U-Net base width")
    p.add_argument("--train-size", type=_positive_int, default=1500, help="training canvases")
    p.add_argument("--threads", type=_positive_int, help="torch threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args):
    from .train import TrainConfig

    return TrainConfig(
        data=args.data, loss=args.loss, per_image=args.per_image, classes=args.classes,
        lovasz_weight=args.lovasz_weight, bins=args.bins,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, equibatch=args.equibatch, seed=args.seed,
        init=args.init, width=args.width, train_size=args.train_size, threads=args.threads,
        root=args.root, num_classes=args.num_classes, val_fraction=args.val_fraction, crop_size=args.crop_size,
        scale=tuple(args.scale), workers=args.workers, model=args.model, weights=args.weights,
        device=args.device, amp=args.amp, channels_last=args.channels_last, weight_decay=args.weight_decay,
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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
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
    p = _Parser(prog="lovasz", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model", description="Train one model.", formatter_class=_HelpFormatter)
    _add_train_args(t)
    t.add_argument("--out", default="runs/train", help="output folder (model.pt, results.json)")
    t.set_defaults(unset_defaults=_unset_defaults(t, {**_LOVASZ_OPTIONS, **_WEIGHT_OPTIONS}))
    e = sub.add_parser(
        "eval", help="evaluate a checkpoint", description="Evaluate a checkpoint.", formatter_class=_HelpFormatter
    )
    e.add_argument("--checkpoint", required=True, type=_checkpoint, help="model.pt written by lovasz train")
    e.add_argument("--data", choices=["digits", "fashion"], help="data set (default: the checkpoint's)")
    e.add_argument("--split", choices=["train", "val", "test"], default="test", help="split to score")
    e.add_argument("--json", help="also write the scores to this file")
    d = sub.add_parser(
        "demo",
        help="CE pretraining, then CE / Lovász fine-tuning, several seeds",
        description="CE pretraining, then CE / Lovász fine-tuning from that checkpoint, for several seeds.",
        formatter_class=_HelpFormatter,
    )
    d.add_argument("--data", choices=["digits", "fashion"], default="digits", help="data set")
    d.add_argument("--seeds", type=_positive_int, default=3, help="fine-tuning seeds")
    d.add_argument("--pretrain-epochs", type=_positive_int, default=16, help="cross-entropy pretraining epochs")
    d.add_argument("--finetune-epochs", type=_positive_int, default=4, help="fine-tuning epochs")
    d.add_argument("--lr", type=_positive_float, default=3e-3, help="pretraining learning rate")
    d.add_argument("--finetune-lr", type=_positive_float, default=5e-4, help="fine-tuning learning rate")
    d.add_argument("--bins", type=_bins, default=4096, help="binned engine budget (>= 64); 0 for the exact engine")
    d.add_argument("--width", type=_positive_int, default=16, help="U-Net base width")
    d.add_argument("--train-size", type=_positive_int, default=1500, help="training canvases")
    d.add_argument("--threads", type=_positive_int, help="torch threads")
    d.add_argument("--long", action="store_true", help="twice the epochs")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _finish_args(args)
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
